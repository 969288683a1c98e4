"""The vocabulary shared by the built-in skills and the pretraining corpus: names, objects,
containers, units and number words."""

from __future__ import annotations

NAMES = (
    "Tom",
    "Anna",
    "Ben",
    "Lucy",
    "Omar",
    "Mia",
    "Leo",
    "Sara",
    "Ivan",
    "Nora",
    "Raj",
    "Emma",
    "Paul",
    "Zoe",
    "Hugo",
    "Lena",
    "Sam",
    "Ada",
    "Max",
    "Ines",
    "Kofi",
    "Yuki",
    "Dan",
    "Rosa",
    "Eli",
    "Maya",
    "Finn",
    "Aisha",
    "Carl",
    "Vera",
    "Jon",
    "Lily",
)
OBJECTS = (
    "apples",
    "books",
    "coins",
    "marbles",
    "pencils",
    "cookies",
    "stickers",
    "cards",
    "shells",
    "stamps",
    "buttons",
    "candies",
    "eggs",
    "flowers",
    "toys",
    "rocks",
    "beads",
    "lemons",
    "plums",
    "nuts",
    "cups",
    "keys",
    "balls",
    "pens",
)
CONTAINERS = (
    ("bag", "bags"),
    ("box", "boxes"),
    ("basket", "baskets"),
    ("jar", "jars"),
    ("shelf", "shelves"),
    ("crate", "crates"),
    ("tray", "trays"),
    ("pack", "packs"),
    ("bowl", "bowls"),
    ("tin", "tins"),
)
PLACES = ("the park", "the shop", "school", "the market", "the beach", "the library", "home")
# (big unit, small unit, factor): "1 big = factor small"
UNITS = (
    ("kilometers", "meters", 1000),
    ("meters", "centimeters", 100),
    ("kilograms", "grams", 1000),
    ("hours", "minutes", 60),
    ("minutes", "seconds", 60),
    ("days", "hours", 24),
    ("weeks", "days", 7),
    ("liters", "milliliters", 1000),
    ("dozens", "items", 12),
    ("years", "months", 12),
)
ONES = (
    "zero",
    "one",
    "two",
    "three",
    "four",
    "five",
    "six",
    "seven",
    "eight",
    "nine",
    "ten",
    "eleven",
    "twelve",
    "thirteen",
    "fourteen",
    "fifteen",
    "sixteen",
    "seventeen",
    "eighteen",
    "nineteen",
)
TENS = ("", "", "twenty", "thirty", "forty", "fifty", "sixty", "seventy", "eighty", "ninety")


def number_word(n: int) -> str:
    """English words for 0 <= n < 1000: 42 -> 'forty two'."""
    if not 0 <= n < 1000:
        raise ValueError(f"number_word covers 0..999, not {n}")
    if n < 20:
        return ONES[n]
    if n < 100:
        return TENS[n // 10] + ("" if n % 10 == 0 else " " + ONES[n % 10])
    rest = n % 100
    return ONES[n // 100] + " hundred" + ("" if rest == 0 else " " + number_word(rest))
