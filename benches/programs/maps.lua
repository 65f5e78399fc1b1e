local cache, size = {}, 0
local hits = 0
for i = 0, 299999 do
  local key = "user:" .. (i % 5000)
  local v = cache[key]
  if v ~= nil then
    hits = hits + v
    if i % 11 == 0 then cache[key] = nil; size = size - 1 end
  else
    cache[key] = i % 97
    size = size + 1
  end
end
print(hits)
print(size)
