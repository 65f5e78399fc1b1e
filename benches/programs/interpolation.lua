local total = 0
for i = 0, 299999 do
  local line = "item " .. i .. ": " .. (i * 2) .. " units at " .. (i % 10) .. ".5 each"
  total = total + #line
end
print(total)
