"""The verifier of docs/your-own-task.md: did the model write the number out in words?"""

import re


def number_words(response: str, reference: str) -> bool:
    """Right when the response ends with the reference's words, case and hyphens aside: "Twenty-one." is right."""
    expected = reference.lower().replace("-", " ").split()
    words = re.findall(r"[a-z]+", response.lower())
    return words[-len(expected) :] == expected
