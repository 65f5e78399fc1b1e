local function kind(i)
  local m = i % 3
  if m == 0 then return 1 elseif m == 1 then return 2 else return 3 end
end
local function area(s, k)
  local size = s[1]
  if k == 1 then return size * size * 3 elseif k == 2 then return size * size else return size * 2 end
end
local total = 0
for i = 0, 499999 do
  local k = kind(i)
  local s
  if k == 1 then s = {i % 10, tag = "Circle"} else s = {i % 10, tag = "Square"} end
  total = (total + area(s, k)) % 1000003
end
print(total)
