#!/usr/bin/env python3
"""Writes a deterministic ~400 MB (uncompressed) 6-layer OCI image layout.

Layer 4 holds ~20k small files. Content mixes random bytes and repeated
text so that gzip compresses it about as much as real images (~2.4:1).
usage: gen_image.py LAYOUT_DIR [SCALE]
"""
import gzip, hashlib, io, json, os, random, sys, tarfile

out = sys.argv[1]
scale = float(sys.argv[2]) if len(sys.argv) > 2 else 1.0
rng = random.Random(1234)
os.makedirs(f"{out}/blobs/sha256", exist_ok=True)
WORDS = [bytes(rng.choice(b"abcdefghijklmnopqrstuvwxyz_./") for _ in range(rng.randrange(2, 10)))
         for _ in range(2000)]
CORPUS = b" ".join(rng.choice(WORDS) for _ in range(6000))[:16384]

def data(n, rnd=2600, blk=8192):
    # each 8 KiB block: incompressible bytes (code, compressed assets) then
    # text that gzip finds again in its window (strings, symbols): ~2.4:1
    out, total = [], 0
    while total < n:
        off = rng.randrange(0, len(CORPUS) - (blk - rnd))
        b = rng.randbytes(rnd) + CORPUS[off:off + blk - rnd]
        out.append(b)
        total += len(b)
    return b"".join(out)[:n]

def put(b):
    d = hashlib.sha256(b).hexdigest()
    with open(f"{out}/blobs/sha256/{d}", "wb") as f:
        f.write(b)
    return d

def layer(files):
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as t:
        dirs = set()
        for name, content in files:
            parts = name.split("/")[:-1]
            for i in range(1, len(parts) + 1):
                d = "/".join(parts[:i])
                if d not in dirs:
                    dirs.add(d)
                    ti = tarfile.TarInfo(d); ti.type = tarfile.DIRTYPE; ti.mode = 0o755; ti.mtime = 1700000000
                    t.addfile(ti)
            ti = tarfile.TarInfo(name); ti.size = len(content); ti.mode = 0o644; ti.mtime = 1700000000
            t.addfile(ti, io.BytesIO(content))
    raw = buf.getvalue()
    gz = gzip.compress(raw, compresslevel=6, mtime=0)
    return raw, gz

big = data(int(32 << 20))
def blob(n):
    off = rng.randrange(0, len(big) - n) if n < len(big) else 0
    return big[off:off + n]

MB = 1 << 20
specs = [
    [(f"usr/lib/big{i}.so", blob(int(25 * MB * scale))) for i in range(4)],
    [(f"opt/app/data{i}.bin", blob(int(16 * MB * scale))) for i in range(5)],
    [(f"usr/share/res{i}", blob(int(5 * MB * scale))) for i in range(10)],
    [(f"usr/share/small/d{i // 200}/f{i}.txt", blob(rng.randrange(500, 6000))) for i in range(int(20000 * scale))],
    [(f"var/cache/c{i}", blob(int(8 * MB * scale))) for i in range(8)],
    [(f"srv/www/page{i}.html", blob(int(3 * MB * scale))) for i in range(15)],
]
layers, diffs = [], []
for spec in specs:
    raw, gz = layer(spec)
    layers.append({"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip", "digest": "sha256:" + put(gz), "size": len(gz)})
    diffs.append("sha256:" + hashlib.sha256(raw).hexdigest())
    print(f"layer {len(layers)}: {len(raw) / MB:.0f} MB raw, {len(gz) / MB:.0f} MB gzip, {len(spec)} files", file=sys.stderr)
cfg = json.dumps({"architecture": "amd64", "os": "linux", "config": {"Cmd": ["/bin/sh"]},
                  "rootfs": {"type": "layers", "diff_ids": diffs}}).encode()
man = json.dumps({"schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
                  "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": "sha256:" + put(cfg), "size": len(cfg)},
                  "layers": layers}).encode()
md = put(man)
json.dump({"schemaVersion": 2, "manifests": [{"mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": "sha256:" + md,
           "size": len(man), "annotations": {"org.opencontainers.image.ref.name": "bench"}}]}, open(f"{out}/index.json", "w"))
open(f"{out}/oci-layout", "w").write('{"imageLayoutVersion":"1.0.0"}')
