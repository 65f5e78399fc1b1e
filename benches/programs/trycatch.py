class Failure(Exception):
    def __init__(self, code):
        self.code = code


def check(i):
    if i % 7 == 0:
        raise Failure(i % 100)
    return i % 13


def main():
    ok = 0
    caught = 0
    for i in range(300000):
        try:
            v = check(i)
            ok += v
        except Failure as f:
            caught += f.code
    print(ok)
    print(caught)


main()
