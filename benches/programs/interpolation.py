def main():
    total = 0
    for i in range(300000):
        line = f"item {i}: {i * 2} units at {i % 10}.5 each"
        total += len(line)
    print(total)


main()
