i = 0
total = 0
while i < 300000:
    line = "item %d: %d units at %d.5 each" % (i, i * 2, i % 10)
    total += len(line)
    i += 1
print(total)
