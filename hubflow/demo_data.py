"""The offline demo dataset: customer-support messages to route to a team (`account`, `billing`, `shipping`,
`technical`). Deterministic: `build_demo_dataset(seed)` draws everything from one seeded `random.Random`.

    python -m hubflow.demo_data ./demo-support      # writes the Hub layout: data/*.parquet + README.md

Messages are composed from intent templates (with `{a|b}` alternatives and `<slot>` fillers), optional greetings,
details, distractor sentences that mention another team's vocabulary, urgency lines and sign-offs, then roughened
(lower case, typos, texting register). About 10% come from genuinely ambiguous templates whose label is drawn among
the plausible teams, as real tickets get routed either way: all-MiniLM-L6-v2 fine-tuned for 2 epochs scores ~0.93 on
test and TF-IDF + logistic regression ~0.93, not 1.0.
Every text is unique across splits, so the test split is never memorised from train.

This module is mostly data (the template tables), hence longer than the house's usual module.
"""

from __future__ import annotations

import random
import re
import sys
from pathlib import Path

DEMO_LABELS: tuple[str, ...] = ("account", "billing", "shipping", "technical")  # sorted: ClassLabel ids == sorted ids
SPLIT_SIZES: dict[str, int] = {"train": 2000, "validation": 200, "test": 400}
_CLASS_WEIGHTS = {"account": 0.20, "billing": 0.30, "shipping": 0.28, "technical": 0.22}

_SLOTS: dict[str, list[str]] = {
    "product": ["Lumo desk lamp", "Nimbus 2 earbuds", "Halcyon thermostat", "Orbit fitness band", "Kestrel backpack",
                "Pulse X speaker", "Vela robot vacuum", "Tern e-reader", "Cobalt keyboard", "Sora webcam",
                "Juniper air purifier", "Atlas router", "Moss plant sensor", "Ember coffee grinder", "Flint power bank",
                "Heron smart scale", "Wren baby monitor", "Quill stylus", "Drift electric toothbrush",
                "Sable headphones"],
    "device": ["iPhone", "Android phone", "Pixel", "Samsung tablet", "Windows laptop", "MacBook", "iPad", "Chromebook"],
    "feature": ["sync", "the dashboard", "bluetooth pairing", "the firmware update", "the companion app",
                "notifications", "the schedule screen", "the history tab", "voice control", "the export button"],
    "error": ["error 503", "error E-104", "a blank white screen", "'something went wrong'", "error code 0x80",
              "a spinning wheel that never stops", "'unable to connect to server'", "error 42", "a timeout error"],
    "carrier": ["UPS", "FedEx", "DHL", "USPS", "Royal Mail", "the courier", "DPD", "Canada Post"],
    "plan": ["Plus plan", "annual subscription", "Pro membership", "family plan", "monthly subscription",
             "premium plan", "extended warranty"],
    "date": ["yesterday", "last week", "on Monday", "last Tuesday", "on the 14th", "two weeks ago", "on March 3rd",
             "a few days ago", "over the weekend", "on 12/03", "this morning", "at the start of the month"],
    "city": ["Leeds", "Austin", "Lyon", "Toronto", "Melbourne", "Denver", "Glasgow", "Dublin", "Munich", "Portland"],
    "country": ["Canada", "Ireland", "Norway", "Australia", "Mexico", "Japan", "Poland", "New Zealand"],
    "name": ["Sam", "Priya", "Jordan", "Mike", "Ana", "Tom", "Lucia", "Chen", "Fatima", "Ollie", "Grace", "Dev"],
    "agent": ["Sarah", "support team", "team", "there", "folks", "all"],
    "user": ["jdawson88", "priya_k", "mike.t", "ana-b", "chenwei", "ollie_r", "gracefully", "devnull42"],
}

# Intent templates per team. `{a|b}` picks one alternative (an empty one is allowed); `<slot>` draws a filler.
_INTENTS: dict[str, list[str]] = {
    "billing": [
        "I was {charged|billed} twice for order <order>.",
        "Why was my card charged <amount> <date>?",
        "I cancelled my <plan> but {I'm still being billed|you keep charging me} every month.",
        "Can I get a refund for the <product>? I {returned|sent back} it <date>.",
        "My refund of <amount> still hasn't {shown up|appeared} on my {statement|bank account}.",
        "The invoice for order <order> says <amount> but {checkout|the website} showed <amount>.",
        "{Please send me|Can I get} a VAT invoice for my last purchase.",
        "My promo code wasn't applied and I paid full price for the <product>.",
        "How do I switch from monthly to annual billing?",
        "There's a charge of <amount> on my card that I don't recognise.",
        "You charged me sales tax even though {I'm tax exempt|we are a registered charity}.",
        "I was billed for the <plan> after the free trial even though I cancelled {before it ended|in time}.",
        "I need a {receipt|proper invoice} for <amount> for my expense report.",
        "The price of the <product> dropped <date>, can you refund the difference?",
        "I got charged a restocking fee of <amount>, that wasn't mentioned anywhere.",
        "Can I pay {in instalments|with PayPal|by bank transfer} instead of by card?",
        "{My|The} <plan> renewed at <amount> instead of the price I signed up for.",
        "I was overcharged by <amount> on my last order.",
        "When will the <amount> credit {you promised|from my complaint} be applied to my bill?",
        "Please {cancel|stop} the automatic renewal of my <plan> and refund this month.",
        "The discount for {students|annual plans} wasn't applied to my invoice.",
        "I paid for gift wrapping on order <order> and it wasn't included, I'd like that money back.",
        "My bank flagged a payment of <amount> from you as suspicious, what is it for?",
    ],
    "shipping": [
        "Where is my order <order>? It was supposed to arrive <date>.",
        "Tracking number <tracking> hasn't updated in <n> days.",
        "The package {says|shows as} delivered but {nothing is at my door|there's nothing here}.",
        "My <product> arrived {damaged|broken}, the box was {crushed|soaking wet}.",
        "I received the wrong item, I ordered the <product> and got the <product> instead.",
        "Can I change the delivery address for order <order>? I'm moving to <city>.",
        "Do you ship to <country>?",
        "How long does express {shipping|delivery} take to <city>?",
        "<carrier> left my parcel with a neighbour I don't know.",
        "Only part of my order arrived, the <product> is missing.",
        "<carrier> says the address is incomplete and they're sending the parcel back.",
        "Can I pick up my order from a {store|parcel locker} instead of home delivery?",
        "My order has been stuck in customs for {a week|<n> days}.",
        "I'd like to return the <product>, how do I get a return label?",
        "The delivery {date keeps|window keeps} getting pushed back.",
        "<carrier> tried to deliver while I was home and left a 'sorry we missed you' card.",
        "Can you hold my package at the depot until I'm back <date>?",
        "My order <order> still says 'preparing to ship' after <n> days.",
        "The parcel was delivered to <city> instead of my address.",
        "Is there any way to get the <product> delivered before the weekend?",
        "The driver {threw|dropped} the box over the fence and the <product> is dented.",
        "Why does my order show two tracking numbers? Only one box {came|arrived}.",
    ],
    "technical": [
        "My <product> won't turn on after {the latest|last night's} firmware update.",
        "The app crashes every time I open <feature> on my <device>.",
        "I keep getting <error> when I try to {sync|log my data|open the app}.",
        "The <product> won't pair with my <device> over bluetooth.",
        "The battery on my <product> {drains in a couple of hours|dies overnight}.",
        "The <product> {keeps disconnecting from wifi|drops off the network} every few minutes.",
        "Setup gets stuck at step {2|3|4}, the light just blinks {orange|red}.",
        "Notifications stopped working on my <device> <date>.",
        "The screen on my <product> {flickers|stays black}.",
        "How do I factory reset the <product>?",
        "The dashboard takes forever to load and then shows <error>.",
        "Is the <product> compatible with my <device>?",
        "Data from my <product> {isn't showing up|stopped appearing} in the app.",
        "The <product> makes a loud buzzing noise when {charging|it starts}.",
        "The export to CSV button does nothing on my <device>.",
        "The companion app {won't install|freezes on the splash screen} on my <device>.",
        "The <product> {reboots itself|restarts randomly} several times a day.",
        "The <product> doesn't show up in the app after I reset my router.",
        "Voice control stopped {recognising|responding to} commands <date>.",
        "The firmware update {fails at 80%|never finishes} on the <product>.",
        "My <product> {overheats|gets really hot} after ten minutes of use.",
        "The {charging cable|dock} doesn't charge the <product> anymore.",
    ],
    "account": [
        "I forgot my password and the reset email never arrives.",
        "How do I change the email address on my account to <email>?",
        "Please delete my account and all my {data|personal data}.",
        "I'm locked out {of my account|} after too many login attempts.",
        "I {lost|replaced} my phone and can't get the two-factor code.",
        "Someone logged into my account from <city>, {that wasn't me|I didn't do that}.",
        "Can I merge my two accounts? One is under <email> and the other under <email>.",
        "How do I change my {username|display name}?",
        "My account says it's {suspended|deactivated}, why?",
        "How do I unsubscribe from the marketing emails?",
        "The verification link in the sign-up email {has expired|doesn't work}.",
        "I need to update the phone number on my profile.",
        "How do I download a copy of my personal data?",
        "I signed up with Google and now want to log in with a normal password.",
        "I can't {sign in|log in}, it says my password is wrong but I just reset it.",
        "Can I transfer my account to my {wife|husband|business partner}?",
        "I never created an account but I'm getting emails addressed to <user>.",
        "Please {turn off|disable} two-factor authentication on my account, I'll set it up again.",
        "My profile still shows my old name after I changed it.",
        "I want to add a second login for my {assistant|colleague} to my account.",
        "The security questions on my account {are wrong|don't match what I set}.",
    ],
}

# Ambiguous tickets: the label is drawn among the teams listed, as different agents would route them.
_AMBIGUOUS: list[tuple[str, tuple[str, ...]]] = [
    ("I can't log in to download my invoice, the page just shows <error>.", ("account", "technical", "billing")),
    ("I paid for express {shipping|delivery} but order <order> took <n> days.", ("billing", "shipping")),
    ("The payment page shows <error> when I try to renew my <plan>.", ("billing", "technical")),
    ("The app logged me out and now says my email isn't registered.", ("account", "technical")),
    ("I returned the <product> <date>, tracking says you got it, still no refund.", ("billing", "shipping")),
    ("My <plan> shows as inactive in the app even though I paid.", ("account", "billing", "technical")),
    ("The <product> stopped working after a week, I want my money back.", ("technical", "billing")),
    ("The package never came so I want to cancel the order.", ("shipping", "billing")),
    ("I changed the address in my profile but order <order> still went to the old one.", ("shipping", "account")),
    ("My card keeps getting declined at checkout even though it works everywhere else.", ("billing", "technical")),
]

_SHORT: dict[str, list[str]] = {
    "billing": ["double charged??", "refund status {pls|please}", "need an invoice for <order>", "why <amount>??",
                "cancel my subscription and refund", "wrong amount charged", "charged after cancelling"],
    "shipping": ["where is my package", "tracking not updating", "wrong item received", "parcel never arrived",
                 "order <order> late", "box arrived damaged", "need a return label"],
    "technical": ["app keeps crashing", "<product> wont connect", "getting <error>", "bluetooth not working",
                  "update failed", "wont turn on", "{sync|wifi} broken again"],
    "account": ["cant log in", "reset password not working", "delete my account {pls|please}", "locked out",
                "change my email", "2fa code never comes", "account hacked?"],
}

_DETAILS: dict[str, list[str]] = {
    "billing": ["The transaction ID is <txn>.", "I paid with my {Visa|Mastercard|Amex} ending in <digits>.",
                "It shows as pending in my banking app.", "This is the second month in a row.",
                "My order number is <order>.", "I have the bank statement if you need it."],
    "shipping": ["The tracking page just says 'in transit'.", "I was home all day and nobody knocked.",
                 "My order number is <order>.", "It was a gift so I really need it soon.",
                 "<carrier> says it's your problem.", "The tracking number is <tracking>."],
    "technical": ["I've already tried restarting it and reinstalling the app.", "I'm on app version <version>.",
                  "It worked fine until <date>.", "The light is blinking {red|blue|white}.",
                  "I'm using a <device>.", "Unplugging it for a minute didn't help."],
    "account": ["My username is <user>.", "I've checked the spam folder too.", "I still have access to my old email.",
                "I don't want to lose my order history.", "The account email is <email>.",
                "I've tried on two different browsers."],
}

# Sentences with another team's vocabulary that are not the request: the model must find the intent.
_DISTRACTORS: dict[str, list[str]] = {
    "billing": ["Payment went through fine, that's not the issue.", "I've paid every invoice on time.",
                "I paid <amount> for it, so I expect it to work.", "I'm on the <plan>."],
    "shipping": ["The order arrived on time, no complaints there.", "Delivery was quick, thanks for that.",
                 "I bought it <date> and it came by <carrier>.", "My order number is <order>."],
    "technical": ["The app itself works fine.", "Not a bug as far as I can tell.", "I'm using a <device>.",
                  "The <product> works great otherwise."],
    "account": ["I've had an account with you for years.", "I'm logged in on my laptop right now.",
                "My username is <user>.", "I use the email <email> for everything."],
}

_NEUTRAL_DETAILS = ["I've been a customer for a long time.", "I've attached a screenshot.", "My name is <name>.",
                    "I already wrote to you <date> and heard nothing.", "Happy to call if that's easier."]

_GREETINGS = ["Hi,", "Hello,", "Hey there,", "Good morning,", "Hi <agent>,", "Dear support,", "hello??", "Hey,",
              "Good afternoon,", "Hi team,"]
_URGENCY = ["This is really frustrating.", "Please help asap.", "Any update would be appreciated.",
            "Second time I'm writing about this!", "Please sort this out today.", "Thanks for looking into it."]
_SIGNOFFS = ["Thanks,", "Thanks in advance!", "Cheers, <name>", "Regards, <name>", "Best, <name>", "- <name>",
             "Thank you.", "thx"]
_INFORMAL = [(r"\byou\b", "u"), (r"\bplease\b", "pls"), (r"\bthanks\b", "thx"), (r"\bI'm\b", "im"),
             (r"\bdon't\b", "dont"), (r"\bcan't\b", "cant"), (r"\bwon't\b", "wont"), (r"\bare\b", "r")]

_ALT = re.compile(r"\{([^{}]*)\}")
_SLOT = re.compile(r"<(\w+)>")


def _fill(template: str, rng: random.Random) -> str:
    text = _ALT.sub(lambda m: rng.choice(m.group(1).split("|")), template)
    return re.sub(r"\s{2,}", " ", _SLOT.sub(lambda m: _slot(m.group(1), rng), text)).replace(" .", ".")


def _slot(name: str, rng: random.Random) -> str:
    if name == "order":
        return rng.choice(["#", "ORD-", "#", ""]) + str(rng.randint(10000, 9999999))
    if name == "amount":
        value = rng.choice([rng.randint(5, 400), round(rng.uniform(3, 250), 2)])
        return rng.choice(["${:.2f}", "${:g}", "£{:.2f}", "€{:g}", "{:.2f} USD"]).format(value)
    if name == "tracking":
        return rng.choice(["1Z", "JD", "TBA", "LX"]) + str(rng.randint(10**8, 10**11))
    if name in ("n", "digits", "txn", "version"):
        return {"n": str(rng.randint(3, 15)), "digits": str(rng.randint(1000, 9999)),
                "txn": f"TX{rng.randint(10**6, 10**8)}", "version": f"{rng.randint(1, 5)}.{rng.randint(0, 19)}"}[name]
    if name == "email":
        user = rng.choice(_SLOTS["user"]).replace("-", ".")
        return f"{user}@{rng.choice(['example.com', 'mail.test', 'inbox.test'])}"
    return rng.choice(_SLOTS[name])


def _roughen(text: str, rng: random.Random) -> str:
    """Informal register and typos, as people actually type into a support form."""
    if rng.random() < 0.15:
        for pattern, repl in rng.sample(_INFORMAL, 3):
            text = re.sub(pattern, repl, text, flags=re.IGNORECASE)
    if rng.random() < 0.2:
        words = text.split(" ")
        for _ in range(rng.randint(1, 2)):
            i = rng.randrange(len(words))
            w = words[i]
            if len(w) >= 5 and w.isalpha():
                j = rng.randrange(1, len(w) - 2)
                words[i] = w[:j] + w[j + 1] + w[j] + w[j + 2:] if rng.random() < 0.6 else w[:j] + w[j + 1:]
        text = " ".join(words)
    if rng.random() < 0.25:
        text = text.lower()
    if rng.random() < 0.1:
        text = text.rstrip(".!")
    return text


def _message(rng: random.Random) -> tuple[str, str]:
    """One (text, label) pair."""
    label = rng.choices(DEMO_LABELS, weights=[_CLASS_WEIGHTS[c] for c in DEMO_LABELS])[0]
    if rng.random() < 0.15:
        return _roughen(_fill(rng.choice(_SHORT[label]), rng), rng), label
    ambiguous = rng.random() < 0.12  # of the non-short messages: ~10% of all
    if ambiguous:
        template, teams = rng.choice(_AMBIGUOUS)
        core, label = _fill(template, rng), rng.choice(teams)
    else:
        core = _fill(rng.choice(_INTENTS[label]), rng)
    parts = [core]
    if rng.random() < 0.5:
        # An ambiguous ticket gets a neutral detail: a team-specific one would give its drawn label away.
        parts.append(_fill(rng.choice(_NEUTRAL_DETAILS if ambiguous else _DETAILS[label]), rng))
    if rng.random() < 0.25:
        other = rng.choice([c for c in DEMO_LABELS if c != label])
        parts.insert(rng.randrange(len(parts) + 1), _fill(rng.choice(_DISTRACTORS[other]), rng))
    if rng.random() < 0.2:
        parts.append(rng.choice(_URGENCY))
    if rng.random() < 0.5:
        parts.insert(0, _fill(rng.choice(_GREETINGS), rng))
    if rng.random() < 0.35:
        parts.append(_fill(rng.choice(_SIGNOFFS), rng))
    return _roughen(" ".join(parts), rng), label


def build_demo_dataset(seed: int = 0):
    """seed → DatasetDict(train/validation/test) of unique `text` with a `label` ClassLabel(DEMO_LABELS)."""
    from datasets import ClassLabel, Dataset, DatasetDict, Features, Value

    rng = random.Random(seed)
    total = sum(SPLIT_SIZES.values())
    seen: set[str] = set()
    rows: list[tuple[str, str]] = []
    while len(rows) < total:  # unique texts, so no test message also sits in train
        text, label = _message(rng)
        if text not in seen:
            seen.add(text)
            rows.append((text, label))
    features = Features({"text": Value("string"), "label": ClassLabel(names=list(DEMO_LABELS))})
    index = {name: i for i, name in enumerate(DEMO_LABELS)}
    splits, start = {}, 0
    for split, size in SPLIT_SIZES.items():
        chunk = rows[start:start + size]
        start += size
        splits[split] = Dataset.from_dict(
            {"text": [t for t, _ in chunk], "label": [index[lab] for _, lab in chunk]}, features=features
        )
    return DatasetDict(splits)


def _card(sizes: dict[str, tuple[int, int]]) -> str:
    names = "\n".join(f"          '{i}': {name}" for i, name in enumerate(DEMO_LABELS))
    files = "\n".join(f"  - split: {s}\n    path: data/{s}-*" for s in sizes)
    split_info = "\n".join(f"  - name: {s}\n    num_bytes: {b}\n    num_examples: {n}" for s, (n, b) in sizes.items())
    return f"""---
language:
- en
license: cc0-1.0
task_categories:
- text-classification
pretty_name: hubflow demo support tickets
configs:
- config_name: default
  data_files:
{files}
dataset_info:
  features:
  - name: text
    dtype: string
  - name: label
    dtype:
      class_label:
        names:
{names}
  splits:
{split_info}
---

# hubflow demo: support tickets

Synthetic customer-support messages routed to one of {len(DEMO_LABELS)} teams: {", ".join(DEMO_LABELS)}.
Generated offline and deterministically by `hubflow.demo_data.build_demo_dataset(seed=0)`; every text is unique.
About 10% of the messages are genuinely ambiguous (their team is drawn among the plausible ones), so expect
a fine-tuned small encoder in the low 90s of accuracy, not 100%.
"""


def write_demo_parquet(out_dir: str | Path, seed: int = 0) -> list[Path]:
    """Folder → the Hub dataset layout: `data/{split}-00000-of-00001.parquet` + `README.md`; returns the paths."""
    dsdict = build_demo_dataset(seed)
    return write_hub_layout(dsdict, out_dir, _card({s: (len(ds), ds.data.nbytes) for s, ds in dsdict.items()}))


def write_hub_layout(dsdict, out_dir: str | Path, card: str) -> list[Path]:
    """A DatasetDict as a Hub dataset folder: `data/{split}-00000-of-00001.parquet` and the card -> the paths."""
    out = Path(out_dir)
    (out / "data").mkdir(parents=True, exist_ok=True)
    written = []
    for split, ds in dsdict.items():
        path = out / "data" / f"{split}-00000-of-00001.parquet"
        ds.to_parquet(str(path))
        written.append(path)
    (out / "README.md").write_text(card)
    return [*written, out / "README.md"]


# ---- the drift scenario (hubflow demo --scenario drift): a product line the training data never had (home solar
# and EV charging), written in a way it never saw (formal letters). Same four teams, so the model still has a right
# answer; a different label mix, since a new hardware line brings mostly technical questions.
_SHIFT_WEIGHTS = {"account": 0.10, "billing": 0.27, "shipping": 0.18, "technical": 0.45}
_SHIFT_SLOTS: dict[str, list[str]] = {
    "solar": ["SunVault 5kW inverter", "Voltbay wallbox charger", "SunVault home battery", "Gridline smart meter",
              "Helios rooftop panel kit", "Voltbay portable charger", "SunVault hybrid inverter"],
    "fault": ["fault code F-21", "isolation fault ISO-3", "grid overvoltage alarm", "fault E-07", "earth leakage trip"],
}
_SHIFT_INTENTS: dict[str, list[str]] = {
    "technical": [
        "the <solar> displays <fault> and has ceased producing power since <date>",
        "the <solar> will not commence a charging session for our vehicle",
        "the feed-in readings of the <solar> are no longer recorded in the monitoring portal",
        "the <solar> trips the household circuit breaker whenever it is switched on",
        "the <solar> reports <fault> every afternoon when generation peaks",
        "the <solar> has not reconnected to the grid after the recent power cut",
    ],
    "billing": [
        "the installation fee for the <solar> was invoiced twice",
        "the feed-in tariff credit for last quarter has not been applied to our statement",
        "the financing instalment for the <solar> was debited in advance of the agreed date",
        "the government rebate for the <solar> was not deducted from the final invoice",
    ],
    "shipping": [
        "the pallet containing the <solar> arrived without the mounting rails",
        "the freight carrier requires a forklift to unload the <solar>, which we do not have",
        "the delivery of the <solar> has been rescheduled three times without explanation",
    ],
    "account": [
        "we have sold the property and wish to transfer the <solar> registration to the new owner",
        "our installer requires access to the energy portal for the <solar>",
        "the energy portal does not accept the serial number of our <solar>",
    ],
}
_FORMAL_OPEN = ["Dear Sir or Madam,", "To whom it may concern,", "Dear Customer Care Department,"]
_FORMAL_CLOSE = ["Yours faithfully, <name>", "Kind regards, <name>", "With thanks in anticipation, <name>"]


def _shifted_message(rng: random.Random) -> tuple[str, str]:
    """One (text, label) pair of the new product line, in the formal register."""
    label = rng.choices(DEMO_LABELS, weights=[_SHIFT_WEIGHTS[c] for c in DEMO_LABELS])[0]
    core = _ALT.sub(lambda m: rng.choice(m.group(1).split("|")), rng.choice(_SHIFT_INTENTS[label]))
    core = _SLOT.sub(lambda m: rng.choice(_SHIFT_SLOTS[m.group(1)]) if m.group(1) in _SHIFT_SLOTS
                     else _slot(m.group(1), rng), core)
    reference = f"Customer reference: {rng.choice(['SV', 'VB', 'GL'])}-{rng.randint(100000, 999999)}."
    body = (f"{rng.choice(_FORMAL_OPEN)} I am writing to inform you that {core}. {reference} "
            f"I would be grateful if you could look into this matter at your earliest convenience. "
            f"{_fill(rng.choice(_FORMAL_CLOSE), rng)}")
    return body, label


def tickets_card(dsdict) -> str:
    """The dataset card (README.md, with each split's size) of a support-tickets DatasetDict."""
    return _card({s: (len(ds), ds.data.nbytes) for s, ds in dsdict.items()})


def ticket_batch(rows: int, seed: int, shift: float = 0.0) -> list[tuple[str, str]]:
    """A nightly batch of fresh tickets: `rows` (text, label) pairs, a `shift` share of them from the new product
    line in the formal register, the rest drawn as the demo dataset's are. Deterministic in (rows, seed, shift);
    texts unique within the batch."""
    rng = random.Random(f"batch:{seed}")
    shifted = round(rows * shift)
    out: list[tuple[str, str]] = []
    seen: set[str] = set()
    while len(out) < rows:
        text, label = _shifted_message(rng) if len(out) < shifted else _message(rng)
        if text not in seen:
            seen.add(text)
            out.append((text, label))
    rng.shuffle(out)
    return out


if __name__ == "__main__":
    for p in write_demo_parquet(sys.argv[1] if len(sys.argv) > 1 else "demo-support"):
        print(p)
