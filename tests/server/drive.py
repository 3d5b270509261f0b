#!/usr/bin/env python3
"""Drives `serve` with clients nobody here wrote: the official `openai` package and curl.

usage: drive.py client|faults|spec --serve PATH --generate PATH --model GGUF [--threads N]

Each section starts its own server on 127.0.0.1 (a free port), checks what README.md's
"serve" promises, and stops it. Every request goes to loopback and has a timeout; the
number of requests is fixed. Exit 0 when every check passed; the first failure raises.
Started by tests/test_server.c (so Criterion counts it) with PYTHONPATH holding openai.
"""
import argparse, concurrent.futures, http.client, json, os, random, re, signal, struct, subprocess, sys, time
import urllib.request

import openai

CHECKS = 0


def check(cond, what):
    global CHECKS
    if not cond:
        raise AssertionError(what)
    CHECKS += 1


def log(*a):
    print("drive:", *a, flush=True)


class Server:
    def __init__(self, args, *extra):
        cmd = [args.serve, "-m", args.model, "--device", "cpu", "-t", str(args.threads), "--port", "0", *extra]
        self.p = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        self.lines = []
        deadline = time.time() + 240
        while time.time() < deadline:
            line = self.p.stderr.readline()
            if not line:
                raise AssertionError("serve exited before listening:\n" + "".join(self.lines))
            self.lines.append(line)
            m = re.search(r"listening on http://127\.0\.0\.1:(\d+)", line)
            if m:
                self.port = int(m.group(1))
                break
            fp = re.search(r'system_fingerprint "(.*)"', line)
            if fp:
                self.fingerprint = fp.group(1)
        else:
            raise AssertionError("serve did not listen within 240 s")
        self.base = "http://127.0.0.1:%d" % self.port

    def client(self, key="none", timeout=300):
        return openai.OpenAI(base_url=self.base + "/v1", api_key=key, max_retries=0, timeout=timeout)

    def metrics(self):
        with urllib.request.urlopen(self.base + "/metrics", timeout=30) as r:
            text = r.read().decode()
        out = {}
        for line in text.splitlines():
            if line and not line.startswith("#"):
                k, v = line.rsplit(" ", 1)
                out[k] = float(v)
        return out

    def post(self, path, body):
        req = urllib.request.Request(self.base + path, json.dumps(body).encode(), {"Content-Type": "application/json"})
        with urllib.request.urlopen(req, timeout=60) as r:
            return json.loads(r.read())

    def stop(self, sig=signal.SIGTERM, timeout=120):
        if sig:
            self.p.send_signal(sig)
        try:
            rc = self.p.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.p.kill()
            raise AssertionError("serve did not exit within %d s of the signal" % timeout)
        rest = self.p.stderr.read()
        return rc, "".join(self.lines) + rest


def f32_bits(x):
    return "%08x" % struct.unpack("<I", struct.pack("<f", x))[0]


PROMPT = "The capital of France is"


def completion_record(c):
    """tokens and log-prob bits of a non-stream completion choice (our extra fields)"""
    lp = c.logprobs.model_extra
    return lp["token_ids"], lp["token_logprob_bits"], lp["top_token_ids"], lp["top_logprob_bits"]


# ---- section: client ---------------------------------------------------------------------

def stream_completion(cl, **kw):
    """text, token ids, bits and the finish reason of a streamed completion"""
    text, ids, bits, fin, usage = "", [], [], None, None
    for ch in cl.completions.create(stream=True, stream_options={"include_usage": True}, **kw):
        if ch.usage:
            usage = ch.usage
        for c in ch.choices:
            text += c.text
            if c.logprobs:
                ids += c.logprobs.model_extra["token_ids"]
                bits += c.logprobs.model_extra["token_logprob_bits"]
            if c.finish_reason:
                check(fin is None, "two finish events in one stream")
                fin = c.finish_reason
    check(fin is not None, "stream without a final event")
    check(usage is not None, "stream_options.include_usage gave no usage chunk")
    return text, ids, bits, fin


def section_client(args):
    s = Server(args, "--max-seqs", "16", "--max-queue", "64")
    cl = s.client()
    model = cl.models.list().data[0].id
    check(model.endswith("Q4_1"), "model id %r" % model)

    # greedy, with top-2 log-probs
    g = cl.completions.create(model=model, prompt=PROMPT, max_tokens=4, temperature=0, logprobs=2)
    check(g.system_fingerprint == s.fingerprint, "fingerprint differs from the one serve printed")
    check("model sha256:" in g.system_fingerprint and "exact" in g.system_fingerprint, "receipt lacks fields")
    G = completion_record(g.choices[0])
    check(len(G[0]) == 4 and g.choices[0].finish_reason == "length", "greedy: %r" % g.choices[0])
    for i, (lp, b) in enumerate(zip(g.choices[0].logprobs.token_logprobs, G[1])):
        check(f32_bits(lp) == b, "decimal %r does not give bits %s" % (lp, b))
        check(G[2][i][0] == G[0][i] and G[3][i][0] == b, "greedy token %d is not its top-1" % i)
    log("greedy:", repr(g.choices[0].text), G[1])

    # a stop string ends the text before it (" Paris.\n\n" stopped at "."), streamed or not;
    # the stream holds back what could begin it
    st = cl.completions.create(model=model, prompt=PROMPT, max_tokens=4, temperature=0, stop=["."])
    check(st.choices[0].text == " Paris" and st.choices[0].finish_reason == "stop", "stop: %r" % st.choices[0])
    text, _, _, fin = stream_completion(cl, model=model, prompt=PROMPT, max_tokens=4, temperature=0, stop=["s.\n"])
    check(text == " Pari" and fin == "stop", "streamed stop: %r %r" % (text, fin))

    # generate --json on the same request: the same tokens and bits
    out = subprocess.run([args.generate, "-m", args.model, "--device", "cpu", "-t", str(args.threads), "-p", PROMPT,
                          "-n", "4", "--temp", "0", "--json", "--logprobs", "2"], capture_output=True, text=True, timeout=300)
    check(out.returncode == 0, "generate failed: " + out.stderr)
    gen = json.loads(out.stdout.splitlines()[0])
    check(gen["tokens"] == G[0] and gen["logprob_bits"] == G[1], "serve %r vs generate %r" % (G[:2], gen))
    check(gen["system_fingerprint"] == s.fingerprint, "generate's receipt %r" % gen["system_fingerprint"])

    # echo scoring: prompt + completion as token ids, nothing generated; the completion's
    # positions get the generated tokens' bits (prefill = decode), top-2 included
    prompt_ids = s.post("/tokenize", {"content": PROMPT})["tokens"]
    sc = cl.completions.create(model=model, prompt=prompt_ids + G[0], max_tokens=0, echo=True, logprobs=2, temperature=0)
    S = completion_record(sc.choices[0])
    n = len(prompt_ids)
    check(S[0] == prompt_ids + G[0], "echo token ids %r" % S[0])
    check(S[1][0] is None and sc.choices[0].logprobs.token_logprobs[0] is None, "first echoed token has a log-prob")
    check(S[1][n:] == G[1] == gen["logprob_bits"], "scored %r vs generated %r" % (S[1][n:], G[1]))
    check(S[2][n:] == G[2] and S[3][n:] == G[3], "scored top-2 differs from generated")
    check(sc.choices[0].text == PROMPT + g.choices[0].text, "echo text %r" % sc.choices[0].text)
    check(sc.usage.completion_tokens == 0, "scoring generated tokens")
    log("echo scoring equals generation and generate --json, bit for bit")

    # the fixed request: seeded, temperature 0.8, alone first
    F_req = dict(model=model, prompt="Once upon a time", max_tokens=4, temperature=0.8, seed=7, logprobs=1)
    F = completion_record(cl.completions.create(**F_req).choices[0])

    # 16 concurrent clients: 6 x the fixed request, 2 x greedy streamed, 8 random others
    rng = random.Random(13)
    words = "red blue cat dog sun rain one two tree river city book song light stone bird".split()
    jobs = [("F", F_req)] * 6 + [("G", dict(model=model, prompt=PROMPT, max_tokens=4, temperature=0, logprobs=2))] * 2
    for i in range(8):
        jobs.append(("R", dict(model=model, prompt=" ".join(rng.choice(words) for _ in range(rng.randint(1, 4))),
                               max_tokens=rng.randint(1, 4), temperature=rng.choice([0, 0.7, 1.0]), seed=rng.randint(0, 99),
                               logprobs=rng.choice([None, 0, 3]))))
    rng.shuffle(jobs)

    def one(job):
        kind, req = job
        if kind == "G":
            return kind, stream_completion(cl, **req)
        r = cl.completions.create(**req)
        return kind, r

    t0 = time.time()
    with concurrent.futures.ThreadPoolExecutor(16) as ex:
        results = list(ex.map(one, jobs))
    log("16 concurrent clients answered in %.1f s" % (time.time() - t0))
    ids = set()
    for kind, r in results:
        if kind == "F":
            check(completion_record(r.choices[0]) == F, "fixed request under load: %r vs %r" % (completion_record(r.choices[0]), F))
            ids.add(r.id)
        elif kind == "G":
            text, tids, bits, fin = r
            check(tids == G[0] and bits == G[1] and text == g.choices[0].text and fin == "length",
                  "streamed greedy under load %r vs %r" % ((text, tids, bits), G))
        else:
            check(len(r.choices) == 1 and r.choices[0].finish_reason in ("length", "stop"), "random request %r" % r)
            ids.add(r.id)
    check(len(ids) == 14, "response ids not unique")
    log("fixed request identical 6/6 under load, streamed greedy 2/2")

    # chat: the model's template; logprobs + top_logprobs; streamed equals whole
    msgs = [{"role": "user", "content": "Say hi"}]
    with concurrent.futures.ThreadPoolExecutor(2) as ex:
        fw = ex.submit(lambda: cl.chat.completions.create(model=model, messages=msgs, max_tokens=3, temperature=0,
                                                          logprobs=True, top_logprobs=2))
        fs = ex.submit(lambda: list(cl.chat.completions.create(model=model, messages=msgs, max_tokens=3, temperature=0,
                                                               logprobs=True, top_logprobs=2, stream=True)))
        whole, chunks = fw.result(), fs.result()
    wc = whole.choices[0]
    check(wc.message.role == "assistant" and wc.message.content, "chat: %r" % wc)
    check(len(wc.logprobs.content) == 3 and all(len(t.top_logprobs) == 2 for t in wc.logprobs.content), "chat logprobs")
    for t in wc.logprobs.content:
        check(f32_bits(t.logprob) == t.model_extra["bits"], "chat bits")
        check(bytes(t.bytes).decode("utf-8", "replace") == t.token or t.token.startswith("bytes:"), "chat token bytes")
    check(chunks[0].choices[0].delta.role == "assistant", "first chat chunk has no role")
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    sbits = [t.model_extra["bits"] for c in chunks if c.choices and c.choices[0].logprobs for t in c.choices[0].logprobs.content]
    check(text == wc.message.content, "streamed chat %r vs %r" % (text, wc.message.content))
    check(sbits == [t.model_extra["bits"] for t in wc.logprobs.content], "streamed chat bits differ")
    check([c.choices[0].finish_reason for c in chunks if c.choices][-1] == wc.finish_reason, "chat finish")
    log("chat:", repr(wc.message.content))

    # a client that leaves mid-stream: its request is cancelled and its blocks freed
    before = s.metrics()
    conn = http.client.HTTPConnection("127.0.0.1", s.port, timeout=60)
    conn.request("POST", "/v1/completions", json.dumps({"prompt": "Tell me a long story", "max_tokens": 200, "stream": True}),
                 {"Content-Type": "application/json"})
    resp = conn.getresponse()
    got = 0
    while got < 2:
        line = resp.readline()
        got += line.startswith(b"data: ")
    held = s.metrics()["detinfer_kv_blocks_in_use"]
    check(held > 0, "a running stream holds no KV blocks")
    conn.sock.shutdown(2)
    conn.close()
    deadline = time.time() + 60
    while time.time() < deadline:
        m = s.metrics()
        if m['detinfer_requests_total{outcome="cancelled"}'] == 1 and m["detinfer_kv_blocks_in_use"] == 0:
            break
        time.sleep(0.2)
    check(m["detinfer_kv_blocks_in_use"] == 0, "blocks still held after the disconnect: %r" % m)
    check(m['detinfer_requests_total{outcome="cancelled"}'] == 1, "the disconnect was not counted as cancelled")
    check(m["detinfer_generated_tokens_total"] - before["detinfer_generated_tokens_total"] < 200, "the request ran to the end")
    log("disconnect freed %d blocks" % held)

    # every request answered exactly once: 5 + 1 + 16 + 2 ok, 1 cancelled, nothing else
    check(m['detinfer_requests_total{outcome="ok"}'] == 24, "ok count %r" % m)
    for o in ("aborted", "client_error", "server_error", "rejected"):
        check(m['detinfer_requests_total{outcome="%s"}' % o] == 0, "%s count %r" % (o, m))
    rc, err = s.stop()
    check(rc == 0, "serve exit %d:\n%s" % (rc, err))


# ---- section: faults -------------------------------------------------------------------------

def curl(s, path, data=None, key="K", method=None, raw=None):
    cmd = ["curl", "-sS", "-m", "60", "-o", "-", "-w", "\n%{http_code}", "-D", "/dev/stderr"]
    if key:
        cmd += ["-H", "Authorization: Bearer " + key]
    if method:
        cmd += ["-X", method]
    if data is not None or raw is not None:
        cmd += ["-H", "Content-Type: application/json", "--data-binary", "@-"]
    r = subprocess.run(cmd + [s.base + path], input=raw if raw is not None else (data or "").encode(),
                       capture_output=True, timeout=90)
    body, status = r.stdout.rsplit(b"\n", 1)
    return int(status), body, r.stderr.decode("latin-1")


def expect_error(s, path, body, status, param=None, key="K", raw=None, method=None):
    st, b, _ = curl(s, path, body, key=key, raw=raw, method=method)
    check(st == status, "%s %r: status %d (want %d): %r" % (path, (body or raw or b"")[:80], st, status, b[:300]))
    e = json.loads(b)["error"]
    check(set(e) == {"message", "type", "param", "code"}, "error shape %r" % e)
    check(e["param"] == param, "%r: param %r (want %r)" % ((body or raw or b"")[:80], e["param"], param))
    return e


def section_faults(args):
    s = Server(args, "--api-key", "K", "--max-seqs", "2", "--max-queue", "1", "--ctx", "256", "--max-body", "4096",
               "--drain-timeout", "3")
    C = "/v1/completions"
    # bad input, by curl: each gets its status and names its field
    expect_error(s, C, '{"prompt": "hi", ', 400)
    expect_error(s, C, '[1, 2]', 400)
    expect_error(s, C, None, 400, raw=b'{"prompt": "caf\xe9"}')
    expect_error(s, C, '{"prompt": 5}', 422, "prompt")
    expect_error(s, C, '{"prompt": "hi", "max_tokens": "ten"}', 422, "max_tokens")
    expect_error(s, C, '{"prompt": "hi", "temperature": 7}', 422, "temperature")
    expect_error(s, C, '{"prompt": "hi", "top_p": 0}', 422, "top_p")
    expect_error(s, C, '{"prompt": "hi", "logprobs": 99}', 422, "logprobs")
    expect_error(s, C, '{"prompt": [1, 2, 99999999]}', 422, "prompt[2]")
    expect_error(s, C, '{"prompt": "hi", "stop": ["a", 3]}', 422, "stop[1]")
    expect_error(s, C, '{"prompt": "hi", "presence_penalty": 1.5}', 422, "presence_penalty")
    expect_error(s, C, '{"max_tokens": 3}', 422, "prompt")
    expect_error(s, C, '{"prompt": "hi", "model": "gpt-4"}', 404, "model")
    expect_error(s, C, '{"prompt": "hi", "max_tokens": 300}', 400, "max_tokens")
    e = expect_error(s, C, json.dumps({"prompt": "word " * 300}), 400, "prompt")
    check(e["code"] == "context_length_exceeded", "context code %r" % e)
    expect_error(s, C, json.dumps({"prompt": "x" * 5000}), 413)
    expect_error(s, C, '{"prompt": "hi"}', 401, key="wrong")
    expect_error(s, C, '{"prompt": "hi"}', 401, key=None)
    expect_error(s, "/v1/chat/completions", '{"messages": [{"role": "wizard", "content": "hi"}]}', 422, "messages[0].role")
    expect_error(s, "/v1/chat/completions", '{"messages": [{"role": "user"}]}', 422, "messages[0].content")
    expect_error(s, "/v1/chat/completions", '{"messages": [{"role": "user", "content": "hi"}], "top_logprobs": 2}', 422, "top_logprobs")
    expect_error(s, "/v1/nothing", None, 404)
    expect_error(s, C, None, 405, method="GET")
    st, b, _ = curl(s, "/health", key=None)
    check(st == 200 and json.loads(b)["status"] == "ok", "health %d %r" % (st, b))
    st, b, _ = curl(s, "/tokenize", '{"content": "Hello world"}')
    toks = json.loads(b)["tokens"]
    st2, b2, _ = curl(s, "/detokenize", json.dumps({"tokens": toks}))
    check(st == 200 and st2 == 200 and json.loads(b2)["content"] == "Hello world", "tokenize round trip %r %r" % (b, b2))
    # the openai client sees the same errors as its own exception types
    cl = s.client("K", timeout=120)
    try:
        cl.completions.create(model="gpt-4", prompt="hi", max_tokens=1)
        check(False, "unknown model accepted")
    except openai.NotFoundError as x:
        check(x.body["param"] == "model", "openai NotFoundError %r" % x.body)
    try:
        s.client("bad").completions.create(model="x", prompt="hi")
        check(False, "wrong key accepted")
    except openai.AuthenticationError:
        pass
    try:
        cl.completions.create(model="SmolLM2-135M-Instruct.Q4_1", prompt="hi", temperature=-1)
        check(False, "negative temperature accepted")
    except openai.UnprocessableEntityError as x:
        check(x.body["param"] == "temperature", "openai 422 %r" % x.body)
    log("bad input: every status and field as documented (curl and openai)")

    # a full queue: two running (long stream A, B), one waiting (C), the next is refused
    def start_stream(prompt, n):
        conn = http.client.HTTPConnection("127.0.0.1", s.port, timeout=120)
        conn.request("POST", C, json.dumps({"prompt": prompt, "max_tokens": n, "stream": True, "ignore_eos": True}),
                     {"Content-Type": "application/json", "Authorization": "Bearer K"})
        r = conn.getresponse()
        check(r.status == 200, "stream status %d" % r.status)
        return conn, r

    def first_event(r):
        while True:
            line = r.readline()
            if line.startswith(b"data: "):
                return line

    A = start_stream("Tell me a long story", 200)
    first_event(A[1])
    B = start_stream("Count to ten", 200)
    first_event(B[1])
    check(s.metrics()["detinfer_queue_depth"] == 0, "A and B have tokens yet count as waiting")
    Cq = start_stream("Name a color", 4)      # waits: both sequence slots are taken
    deadline = time.time() + 60
    while s.metrics()["detinfer_queue_depth"] < 1 and time.time() < deadline:
        time.sleep(0.1)
    check(s.metrics()["detinfer_queue_depth"] == 1, "the third request is not queued")
    st, b, hdr = curl(s, C, '{"prompt": "hi", "max_tokens": 1}')
    check(st == 503 and json.loads(b)["error"]["code"] == "queue_full", "full queue: %d %r" % (st, b))
    check(re.search(r"(?im)^retry-after: *\d+", hdr), "503 without Retry-After:\n" + hdr)
    log("full queue: 503 with Retry-After")

    # SIGTERM with three in flight: no new connections; each stream gets one final event
    # (finished, or "abort" when the drain time is over) and [DONE]; exit 0
    t0 = time.time()
    s.p.send_signal(signal.SIGTERM)
    time.sleep(0.5)
    refused = False
    try:
        urllib.request.urlopen(s.base + "/health", timeout=5)
    except Exception:
        refused = True
    check(refused, "a new connection was accepted after SIGTERM")
    finals = []
    for conn, r in (A, B, Cq):
        events = [l[6:].strip() for l in r.read().split(b"\n") if l.startswith(b"data: ")]
        check(events and events[-1] == b"[DONE]", "stream did not end with [DONE]: %r" % events[-2:])
        fins = [json.loads(e)["choices"][0]["finish_reason"] for e in events[:-1] if json.loads(e)["choices"]]
        fins = [f for f in fins if f]
        check(len(fins) == 1, "finish events %r" % fins)
        finals.append(fins[0])
        conn.close()
    check(finals[0] == "abort", "a 200-token stream finished within the drain time? %r" % finals)
    check(all(f in ("length", "abort") for f in finals), "final events %r" % finals)
    rc, err = s.stop(sig=None, timeout=120)
    check(rc == 0, "serve exited %d after SIGTERM:\n%s" % (rc, err))
    check("every request answered" in err, "no shutdown line:\n" + err)
    log("SIGTERM: final events %r, exit 0 after %.1f s" % (finals, time.time() - t0))


# ---- section: spec (speculative decoding changes no bit) ------------------------------------

CODE = "def add(a, b):\n    return a + b\n\ndef sub(a, b):\n    return a - b\n\ndef mul(a, b):\n    return a * b\n\ndef"
OFF = {"speculative": {"draft_max": 0}}


def section_spec(args):
    """A server whose default speculates (--draft-max 4): each request with it and without it
    ("speculative": {"draft_max": 0}) gives the same tokens, bits, text, finish and usage; a stop
    string ends both at the same token (no drafted token after it is kept or counted)."""
    s = Server(args, "--draft-max", "4", "--max-seqs", "4")
    cl = s.client()
    model = cl.models.list().data[0].id

    def both(**kw):
        on = cl.completions.create(model=model, **kw)
        off = cl.completions.create(model=model, extra_body=OFF, **kw)
        a, b = on.choices[0], off.choices[0]
        check(completion_record(a) == completion_record(b), "%r: ids/bits %r vs %r" % (kw, completion_record(a)[:2],
                                                                                    completion_record(b)[:2]))
        check(a.text == b.text and a.finish_reason == b.finish_reason, "%r: %r vs %r" % (kw, a, b))
        check(on.usage == off.usage, "%r: usage %r vs %r" % (kw, on.usage, off.usage))
        return a

    g = both(prompt=CODE, max_tokens=20, temperature=0, logprobs=2)
    log("greedy, speculating and not:", repr(g.text))
    # a stop string that first completes at generated token 8 of the greedy text
    ids = completion_record(g)[0]
    upto = lambda n: s.post("/detokenize", {"tokens": ids[:n]})["content"]
    stop = upto(9)[len(upto(8)) - 2:]
    st = both(prompt=CODE, max_tokens=20, temperature=0, logprobs=0, stop=[stop])
    check(st.finish_reason == "stop" and len(completion_record(st)[0]) <= 9, "stop %r: %r" % (stop, st))
    sampled = dict(prompt=CODE, max_tokens=16, temperature=0.8, seed=7, logprobs=1)
    both(**sampled)
    text, sids, sbits, fin = stream_completion(cl, model=model, **sampled)
    text0, sids0, sbits0, fin0 = stream_completion(cl, model=model, extra_body=OFF, **sampled)
    check((text, sids, sbits, fin) == (text0, sids0, sbits0, fin0), "streamed sampled: %r vs %r" % (sids, sids0))
    msgs = [{"role": "user", "content": "Repeat exactly: the cat sat on the mat, the cat sat on the mat."}]
    ch = cl.chat.completions.create(model=model, messages=msgs, max_tokens=16, temperature=0, logprobs=True)
    ch0 = cl.chat.completions.create(model=model, messages=msgs, max_tokens=16, temperature=0, logprobs=True, extra_body=OFF)
    bits = lambda c: [(t.model_extra["id"], t.model_extra["bits"]) for t in c.choices[0].logprobs.content]
    check(bits(ch) == bits(ch0) and ch.choices[0].message.content == ch0.choices[0].message.content, "chat differs")
    m = s.metrics()
    check(m["detinfer_spec_draft_tokens_total"] > 0 and m["detinfer_spec_accepted_tokens_total"] > 0, "metrics %r" % m)
    check(m["detinfer_spec_tokens_per_step"] > 1, "tokens per step %r" % m["detinfer_spec_tokens_per_step"])
    log("metrics: drafted %d, accepted %d, %.2f tokens per decode step" % (m["detinfer_spec_draft_tokens_total"],
        m["detinfer_spec_accepted_tokens_total"], m["detinfer_spec_tokens_per_step"]))
    C = "/v1/completions"
    expect_error(s, C, '{"prompt": "hi", "speculative": {"draft_max": 17}}', 422, "speculative.draft_max", key=None)
    expect_error(s, C, '{"prompt": "hi", "speculative": {"ngram": 2, "ngram_min": 3}}', 422, "speculative.ngram_min", key=None)
    expect_error(s, C, '{"prompt": "hi", "speculative": {"method": "eagle"}}', 422, "speculative.method", key=None)
    expect_error(s, C, '{"prompt": "hi", "speculative": {"method": "draft_model"}}', 422, "speculative.method", key=None)
    expect_error(s, C, '{"prompt": "hi", "speculative": {"k": 2}}', 422, "speculative", key=None)
    expect_error(s, C, '{"prompt": "hi", "speculative": 4}', 422, "speculative", key=None)
    rc, err = s.stop()
    check(rc == 0, "serve exited %d:\n%s" % (rc, err))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("section", choices=["client", "faults", "spec"])
    ap.add_argument("--serve", required=True)
    ap.add_argument("--generate", required=True)
    ap.add_argument("--model", required=True)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    t0 = time.time()
    {"client": section_client, "faults": section_faults, "spec": section_spec}[args.section](args)
    log("%s: %d checks passed in %.1f s" % (args.section, CHECKS, time.time() - t0))


if __name__ == "__main__":
    main()
