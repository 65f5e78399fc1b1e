local function apply(f, x) return f(x) end
local double = function(x) return x * 2 end
local i, total = 0, 0
while i < 300000 do
  total = (total + apply(double, i)) % 1000003
  i = i + 1
end
local xs = {1, 2, 3, 4, 5, 6, 7, 8, 9, 10}
local j, mapped = 0, 0
while j < 20000 do
  local ys = {}
  for _, x in ipairs(xs) do local y = x * 3; if y % 2 == 0 then ys[#ys + 1] = y end end
  mapped = mapped + #ys
  j = j + 1
end
print(total)
print(mapped)
