local Vec2 = {}
Vec2.__index = Vec2
function Vec2.new(x, y) return setmetatable({x = x, y = y}, Vec2) end
function Vec2:dot(o) return self.x * o.x + self.y * o.y end
function Vec2:scaled_dot(o, k) return self:dot(o) * k end
local a, b = Vec2.new(3, 4), Vec2.new(5, 6)
local acc = 0
for i = 0, 999999 do
  acc = (acc + a:scaled_dot(b, i % 7)) % 1000003
end
print(acc)
