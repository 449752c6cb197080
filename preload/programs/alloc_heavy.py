"""Allocation-heavy Python: dicts, lists, strings, tuples, JSON round
trips, threads. Prints a digest that must be identical under glibc and
under the preloaded pymalloc (run with PYTHONMALLOC=malloc so that every
Python object goes through malloc)."""
import hashlib
import json
import threading

def churn(seed, n):
    h = hashlib.sha256()
    d = {}
    for i in range(n):
        k = f"k{(i * seed) % 5003}"
        d[k] = [i, str(i) * (i % 7), (i, seed), {"x": i}]
        if i % 3 == 0:
            d.pop(f"k{(i * 31) % 5003}", None)
        if i % 1000 == 0:
            h.update(json.dumps(sorted(d.items())[:50]).encode())
    return h.hexdigest()

results = [None] * 4
def worker(t):
    results[t] = churn(t + 3, 60_000)

threads = [threading.Thread(target=worker, args=(t,)) for t in range(4)]
for t in threads:
    t.start()
for t in threads:
    t.join()
big = json.dumps([list(range(i % 100)) for i in range(20_000)])
print(results, len(big), hashlib.sha256(big.encode()).hexdigest()[:16])
