import collections, sys
own, cum, total = collections.Counter(), collections.Counter(), 0
for line in open(sys.argv[1]):
    stack, _, n = line.rstrip().rpartition(" ")
    n = int(n); total += n
    frames = stack.split(";")
    own[frames[-1]] += n
    for f in set(frames):
        cum[f] += n
def short(f):
    return f.replace("/work/main/", "").replace(".venv/lib/python3.11/site-packages/", "")[:110]
print("total samples", total)
print("-- own time"); [print(f"{100*n/total:5.1f}%  {short(f)}") for f, n in own.most_common(18)]
print("-- cumulative"); [print(f"{100*n/total:5.1f}%  {short(f)}") for f, n in cum.most_common(30)]
