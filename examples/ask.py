"""Ask questions of a REALM open-QA model and index; the same program as the `realm-qa` console script.

    python examples/ask.py                                    # the offline demo (built on first use, then cached)
    python examples/ask.py "where was Zorvath Kell born?" --top-k 3
    python examples/ask.py "who wrote hamlet?" --model google/realm-orqa-nq-openqa --allow-pickle

Run `python examples/ask.py --help` for every option.
"""

from modeling_realm.apps import realm_qa

if __name__ == "__main__":
    raise SystemExit(realm_qa())
