local function check(i)
  if i % 7 == 0 then error({code = i % 100}) end
  return i % 13
end
local ok, caught = 0, 0
for i = 0, 299999 do
  local success, v = pcall(check, i)
  if success then ok = ok + v else caught = caught + v.code end
end
print(ok)
print(caught)
