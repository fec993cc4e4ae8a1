import sys
sys.path.insert(0, "/work/main/tests/serve")
from test_trained_adapters import *  # noqa
from test_trained_adapters import MODELS, PROMPT, MESSAGES

def test_debug(client):
    for m in MODELS:
        r = client.completions.create(model=m, prompt=PROMPT, max_tokens=12, temperature=0)
        print(m, repr(r.choices[0].text), r.choices[0].finish_reason, r.usage)
        r = client.completions.create(model=m, prompt="Reverse the word.", max_tokens=12, temperature=0)
        print(m, repr(r.choices[0].text), r.choices[0].finish_reason, r.usage)
        r = client.chat.completions.create(model=m, messages=MESSAGES, max_tokens=12, temperature=0)
        print(m, repr(r.choices[0].message.content), r.choices[0].finish_reason, r.usage)
