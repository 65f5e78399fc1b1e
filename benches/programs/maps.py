def main():
    cache = {}
    hits = 0
    for i in range(300000):
        key = f"user:{i % 5000}"
        if key in cache:
            hits += cache[key]
            if i % 11 == 0:
                del cache[key]
        else:
            cache[key] = i % 97
    print(hits)
    print(len(cache))


main()
