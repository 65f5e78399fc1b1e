def main():
    total = 0
    for i in range(100000):
        name = f"customer {i % 100}"
        prompt = (
            f"You are a support agent writing to {name}. Order #{i} of {i % 7} items, "
            f"shipped to region {i % 13}, is {i % 5} days late; the customer's tier is "
            f"{i % 3}. Write a reply to {name} that apologises for order #{i}, offers "
            f"{i % 4 * 5} percent off and names region {i % 13}."
        )
        total += len(prompt)
    print(total)


main()
