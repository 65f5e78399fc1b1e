import json


def main():
    chars = 0
    total = 0
    for rnd in range(3000):
        items = [
            {"id": j, "name": f"item {j}", "tags": ["red", "green", "blue"],
             "price": j * 3 + rnd % 5, "ok": j % 2 == 0}
            for j in range(20)
        ]
        doc = {"round": rnd, "items": items, "meta": {"source": "bench", "count": 20}}
        text = json.dumps(doc, separators=(",", ":"))
        chars += len(text)
        back = json.loads(text)
        for item in back["items"]:
            if item["ok"]:
                total += item["price"]
    print(chars)
    print(total)


main()
