def apply(f, x):
    return f(x)


double = lambda x: x * 2
i = 0
total = 0
while i < 300000:
    total = (total + apply(double, i)) % 1000003
    i += 1
xs = [1, 2, 3, 4, 5, 6, 7, 8, 9, 10]
j = 0
mapped = 0
while j < 20000:
    ys = list(filter(lambda x: x % 2 == 0, map(lambda x: x * 3, xs)))
    mapped += len(ys)
    j += 1
print(total)
print(mapped)
