local function check(i)
  if i % 7 == 0 then error({code = i % 100}) end
  return i % 13
end
local i, ok, caught = 0, 0, 0
while i < 300000 do
  local success, v = pcall(check, i)
  if success then ok = ok + v else caught = caught + v.code end
  i = i + 1
end
print(ok)
print(caught)
