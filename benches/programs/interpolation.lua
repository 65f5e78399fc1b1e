local i, total = 0, 0
while i < 300000 do
  local line = "item " .. i .. ": " .. (i * 2) .. " units at " .. (i % 10) .. ".5 each"
  total = total + #line
  i = i + 1
end
print(total)
