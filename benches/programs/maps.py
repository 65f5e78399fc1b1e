cache = {}
i = 0
hits = 0
while i < 300000:
    key = "user:%d" % (i % 5000)
    if key in cache:
        hits += cache[key]
        if i % 11 == 0:
            del cache[key]
    else:
        cache[key] = i % 97
    i += 1
print(hits)
print(len(cache))
