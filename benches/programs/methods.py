class Vec2:
    __slots__ = ("x", "y")

    def __init__(self, x, y):
        self.x = x
        self.y = y

    def dot(self, other):
        return self.x * other.x + self.y * other.y

    def scaled_dot(self, other, k):
        return self.dot(other) * k


def main():
    a = Vec2(3, 4)
    b = Vec2(5, 6)
    acc = 0
    for i in range(1000000):
        acc = (acc + a.scaled_dot(b, i % 7)) % 1000003
    print(acc)


main()
