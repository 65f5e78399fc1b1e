local function apply(f, x) return f(x) end
local double = function(x) return x * 2 end
local total = 0
for i = 0, 299999 do
  total = (total + apply(double, i)) % 1000003
end
local xs = {1, 2, 3, 4, 5, 6, 7, 8, 9, 10}
local mapped = 0
for _ = 1, 20000 do
  local ys = {}
  for _, x in ipairs(xs) do local y = x * 3; if y % 2 == 0 then ys[#ys + 1] = y end end
  mapped = mapped + #ys
end
print(total)
print(mapped)
