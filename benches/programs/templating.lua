local format = string.format
local total = 0
for i = 0, 99999 do
  local name = format("customer %d", i % 100)
  local prompt = format(
    "You are a support agent writing to %s. Order #%d of %d items, shipped to region %d, is %d days late; the customer's tier is %d. Write a reply to %s that apologises for order #%d, offers %d percent off and names region %d.",
    name, i, i % 7, i % 13, i % 5, i % 3, name, i, i % 4 * 5, i % 13)
  total = total + #prompt
end
print(total)
