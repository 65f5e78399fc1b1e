class Circle:
    __slots__ = ("r",)

    def __init__(self, r):
        self.r = r


class Square:
    __slots__ = ("r",)

    def __init__(self, r):
        self.r = r


def kind(i):
    m = i % 3
    if m == 0:
        return 1
    if m == 1:
        return 2
    return 3


def area(s, k):
    size = s.r
    if k == 1:
        return size * size * 3
    if k == 2:
        return size * size
    return size * 2


def main():
    total = 0
    for i in range(500000):
        k = kind(i)
        s = Circle(i % 10) if k == 1 else Square(i % 10)
        total = (total + area(s, k)) % 1000003
    print(total)


main()
