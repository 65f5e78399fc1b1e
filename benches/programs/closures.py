def apply(f, x):
    return f(x)


def main():
    double = lambda x: x * 2
    total = 0
    for i in range(300000):
        total = (total + apply(double, i)) % 1000003
    xs = [1, 2, 3, 4, 5, 6, 7, 8, 9, 10]
    mapped = 0
    for _ in range(20000):
        ys = list(filter(lambda x: x % 2 == 0, map(lambda x: x * 3, xs)))
        mapped += len(ys)
    print(total)
    print(mapped)


main()
