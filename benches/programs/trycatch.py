class Failure(Exception):
    def __init__(self, code):
        self.code = code


def check(i):
    if i % 7 == 0:
        raise Failure(i % 100)
    return i % 13


i = 0
ok = 0
caught = 0
while i < 300000:
    try:
        v = check(i)
        ok += v
    except Failure as f:
        caught += f.code
    i += 1
print(ok)
print(caught)
