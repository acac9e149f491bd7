#!/usr/bin/env python3
"""Generates src/tokenizer/tok_unicode_data.c: the Unicode character sets that
Hugging Face `tokenizers` really uses, measured from the library itself.

Why measure instead of reading the Unicode Character Database: `tokenizers`
takes its character properties from several places, each at its own Unicode
version (Oniguruma for regexes, Rust's std for char::is_whitespace /
is_numeric / to_lowercase, the old `unicode-normalization-alignments` crate
for NFC/NFKC, the `unicode_categories` crate for punctuation). To be
byte-exact anvil must use the same sets, so this script probes every code
point through the library's own components and writes the results as range
tables. It also records where PCRE2's built-in properties and utf8proc's
normalization (the libraries anvil runs on) disagree with those sets, so the
C code can route the few affected inputs through an exact path.

Run from the repository root with the test virtual environment:
    .venv/bin/python src/tokenizer/gen_unicode_data.py > src/tokenizer/tok_unicode_data.c
Needs: tokenizers (tests/python/requirements.txt), libpcre2-8 and libutf8proc
(through ctypes). Takes about a minute.
"""
import ctypes
import sys

import tokenizers
from tokenizers import AddedToken, Regex, Tokenizer, models, normalizers, pre_tokenizers

MAXCP = 0x110000
ALL = [c for c in range(MAXCP) if not (0xD800 <= c <= 0xDFFF)]
ALL_NZ = [c for c in ALL if c != 0]

GC = ["Cc", "Cf", "Cn", "Co", "Ll", "Lm", "Lo", "Lt", "Lu", "Mc", "Me", "Mn", "Nd", "Nl", "No",
      "Pc", "Pd", "Pe", "Pf", "Pi", "Po", "Ps", "Sc", "Sk", "Sm", "So", "Zl", "Zp", "Zs"]
GC_MAJOR = ["C", "L", "M", "N", "P", "S", "Z"]


def log(*a):
    print(*a, file=sys.stderr)


def ranges(cps):
    cps = sorted(set(cps))
    out = []
    for c in cps:
        if out and out[-1][1] == c - 1:
            out[-1][1] = c
        else:
            out.append([c, c])
    return out


# ------------------------------------------------------------ Oniguruma (regex) sets
ALL_STR = "".join(chr(c) for c in ALL)


def onig_set(pattern):
    """Code points matched by a one-character Oniguruma pattern."""
    pt = pre_tokenizers.Split(Regex(pattern), "removed", invert=True)
    out = []
    for _, (a, b) in pt.pre_tokenize_str(ALL_STR):
        out.extend(ALL[a:b])
    return set(out)


# ------------------------------------------------------------ PCRE2 (what anvil runs on)
pcre = ctypes.CDLL("libpcre2-8.so.0")
pcre.pcre2_compile_8.restype = ctypes.c_void_p
pcre.pcre2_compile_8.argtypes = [ctypes.c_char_p, ctypes.c_size_t, ctypes.c_uint32,
                                 ctypes.POINTER(ctypes.c_int), ctypes.POINTER(ctypes.c_size_t), ctypes.c_void_p]
pcre.pcre2_substitute_8.argtypes = [ctypes.c_void_p, ctypes.c_char_p, ctypes.c_size_t, ctypes.c_size_t,
                                    ctypes.c_uint32, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_char_p,
                                    ctypes.c_size_t, ctypes.c_char_p, ctypes.POINTER(ctypes.c_size_t)]
PCRE2_UTF, PCRE2_UCP = 0x00080000, 0x00020000
PCRE2_SUBSTITUTE_GLOBAL = 0x00000100
ALL_NZ_BYTES = "".join(chr(c) for c in ALL_NZ).encode("utf-8")


def pcre_set(pattern):
    """Code points matched by a one-character PCRE2 pattern (UTF + UCP)."""
    err, off = ctypes.c_int(), ctypes.c_size_t()
    neg = ("[^" + pattern + "]") if not pattern.startswith("[") else ("[^" + pattern[1:])
    code = pcre.pcre2_compile_8(neg.encode(), len(neg.encode()), PCRE2_UTF | PCRE2_UCP,
                                ctypes.byref(err), ctypes.byref(off), None)
    assert code, pattern
    cap = len(ALL_NZ_BYTES) + 16
    out = ctypes.create_string_buffer(cap)
    outlen = ctypes.c_size_t(cap)
    rc = pcre.pcre2_substitute_8(code, ALL_NZ_BYTES, len(ALL_NZ_BYTES), 0, PCRE2_SUBSTITUTE_GLOBAL,
                                 None, None, b"", 0, out, ctypes.byref(outlen))
    assert rc >= 0, (pattern, rc)
    return set(ord(ch) for ch in out.raw[: outlen.value].decode("utf-8"))


def pcre_unicode_version():
    buf = ctypes.create_string_buffer(64)
    pcre.pcre2_config_8(10, buf)  # PCRE2_CONFIG_UNICODE_VERSION
    return buf.value.decode()


# ------------------------------------------------------------ utf8proc
u8p = ctypes.CDLL("libutf8proc.so.2")
u8p.utf8proc_map.argtypes = [ctypes.c_char_p, ctypes.c_ssize_t, ctypes.POINTER(ctypes.c_void_p), ctypes.c_int]
u8p.utf8proc_map.restype = ctypes.c_ssize_t
u8p.utf8proc_unicode_version.restype = ctypes.c_char_p
libc = ctypes.CDLL(None)
libc.free.argtypes = [ctypes.c_void_p]
U_STABLE, U_COMPAT, U_COMPOSE, U_DECOMPOSE = 1 << 1, 1 << 2, 1 << 3, 1 << 4
FORMS = {"NFC": U_COMPOSE, "NFD": U_DECOMPOSE, "NFKC": U_COMPOSE | U_COMPAT, "NFKD": U_DECOMPOSE | U_COMPAT}


def u8p_norm(s, form):
    b = s.encode("utf-8")
    dst = ctypes.c_void_p()
    n = u8p.utf8proc_map(b, len(b), ctypes.byref(dst), FORMS[form] | U_STABLE)
    assert n >= 0
    r = ctypes.string_at(dst, n).decode("utf-8")
    libc.free(dst)
    return r


def hf_norm_each(form, cps, sep="\x01"):
    n = getattr(normalizers, form)()
    out = n.normalize_str(sep.join(chr(c) for c in cps)).split(sep)
    assert len(out) == len(cps)
    return out


# ------------------------------------------------------------ probes
def probe_regex_sets():
    sets = {}
    for g in GC + GC_MAJOR:
        sets["gc_" + g] = onig_set(r"\p{%s}" % g)
    sets["onig_space"] = onig_set(r"\s")
    sets["onig_word"] = onig_set(r"\w")
    sets["onig_digit"] = onig_set(r"\d")
    # Where PCRE2's native construct (as tok_regex.c emits it in fast mode)
    # differs from Oniguruma's.
    fast = {"onig_space": r"\s", "onig_word": r"[\p{L}\p{M}\p{Nd}\p{Pc}]", "onig_digit": r"\p{Nd}"}
    for g in GC + GC_MAJOR:
        fast["gc_" + g] = r"\p{%s}" % g
    diff = set()
    per = {}
    for name, pat in fast.items():
        p = pcre_set(pat)
        o = sets[name] - {0}
        d = p ^ o
        per[name] = d
        diff |= d
        log("regex %-10s onig=%d pcre=%d diff=%d" % (name, len(o), len(p), len(d)))
    return sets, per


def probe_rust_sets():
    s = {}
    # char::is_whitespace: WhitespaceSplit removes exactly those.
    pt = pre_tokenizers.WhitespaceSplit()
    kept = set()
    for _, (a, b) in pt.pre_tokenize_str(ALL_STR):
        kept.update(ALL[a:b])
    s["rust_whitespace"] = set(ALL) - kept
    # char::is_numeric: Digits(individual) isolates each numeric char; 'a' is not numeric.
    probe = "a" + "a".join(chr(c) for c in ALL_NZ) + "a"
    num = set()
    for tok, _ in pre_tokenizers.Digits(individual_digits=True).pre_tokenize_str(probe):
        if len(tok) == 1 and tok != "a":
            num.add(ord(tok))
    s["rust_numeric"] = num
    # Punctuation pre-tokenizer (is_ascii_punctuation || unicode_categories P*).
    pun = set()
    for tok, _ in pre_tokenizers.Punctuation().pre_tokenize_str(probe):
        if len(tok) == 1 and tok != "a":
            pun.add(ord(tok))
    s["punct"] = pun
    # StripAccents: removes is_combining_mark chars.
    out = normalizers.StripAccents().normalize_str("\x00".join(chr(c) for c in ALL_NZ)).split("\x00")
    s["comb_mark"] = {c for c, o in zip(ALL_NZ, out) if o == ""}
    # BertNormalizer clean_text: removed chars and chars turned into ' '.
    others = [c for c in ALL_NZ if c != ord("Q")]
    bn = normalizers.BertNormalizer(clean_text=True, handle_chinese_chars=False, strip_accents=False,
                                    lowercase=False)
    out = bn.normalize_str("Q".join(chr(c) for c in others)).split("Q")
    assert len(out) == len(others)
    s["bert_remove"] = {c for c, o in zip(others, out) if o == ""} | {0}
    s["bert_space"] = {c for c, o in zip(others, out) if o == " " and c != 0x20}
    # BertNormalizer strip_accents: NFD then drop Mn (unicode_categories); probe NFD-stable chars.
    no1 = [c for c in ALL_NZ if c != 1]
    nfd = hf_norm_each("NFD", no1)
    stable = [c for c, d in zip(no1, nfd) if d == chr(c) and c != ord("Q")]
    bn = normalizers.BertNormalizer(clean_text=False, handle_chinese_chars=False, strip_accents=True,
                                    lowercase=False)
    out = bn.normalize_str("Q".join(chr(c) for c in stable)).split("Q")
    s["bert_mn"] = {c for c, o in zip(stable, out) if o == ""}
    # Lowercase (char::to_lowercase).
    out = normalizers.Lowercase().normalize_str("\x00".join(chr(c) for c in ALL_NZ)).split("\x00")
    lower = {c: o for c, o in zip(ALL_NZ, out) if o != chr(c)}
    # Rust `regex` crate \w and \s as used by added tokens (single_word, lstrip).
    s["rx_word"] = probe_added(single_word=True)
    s["rx_space"] = probe_added(lstrip=True)
    return s, lower


def probe_added(single_word=False, lstrip=False):
    tk = Tokenizer(models.WordLevel({"<unk>": 0, "<m>": 1}, unk_token="<unk>"))
    tk.add_tokens([AddedToken("<m>", single_word=single_word, lstrip=lstrip, normalized=False)])
    res = set()
    step = 50000
    for i in range(0, len(ALL_NZ), step):
        chunk = ALL_NZ[i:i + step]
        encs = tk.encode_batch([chr(c) + "<m>" for c in chunk])
        for c, e in zip(chunk, encs):
            if single_word:
                if 1 not in e.ids:  # not extracted: the char before it is a word char
                    res.add(c)
            else:
                if e.ids and e.ids[0] == 1 and e.offsets[0][0] == 0:  # lstrip took the char
                    res.add(c)
    return res


def u8p_norm_each(form, strs, sep="\x01"):
    out = u8p_norm(sep.join(strs), form).split(sep)
    assert len(out) == len(strs)
    return out


def probe_normalization():
    """Code points where utf8proc must be kept from acting (see tok_normalize.c)."""
    marks = [0x0334, 0x093C, 0x094D, 0x0F71, 0x0F72, 0x05B0, 0x0316, 0x0301, 0x0345, 0x035C, 0x0315,
             0x031B, 0x0327, 0x1DCE, 0x302A, 0x302E]
    cps = [c for c in ALL_NZ if c != 1]
    idx = {c: i for i, c in enumerate(cps)}
    hf = {f: hf_norm_each(f, cps) for f in FORMS}
    differ = set()
    for f in FORMS:
        up = u8p_norm_each(f, [chr(c) for c in cps])
        differ |= {c for c, h, u in zip(cps, hf[f], up) if h != u}
    hf_nfd = normalizers.NFD()
    reorder_hf = {}
    for m in marks:
        strs = []
        for c in cps:
            strs.append("a" + chr(c) + chr(m))
            strs.append("a" + chr(m) + chr(c))
        h = hf_nfd.normalize_str("\x01".join(strs)).split("\x01")
        u = u8p_norm_each("NFD", strs)
        for i, c in enumerate(cps):
            if h[2 * i] != u[2 * i] or h[2 * i + 1] != u[2 * i + 1]:
                differ.add(c)
            if h[2 * i] != strs[2 * i] or h[2 * i + 1] != strs[2 * i + 1]:
                reorder_hf[c] = True
    # Every differing code point must be inert for HF (no mapping, canonical
    # combining class 0): then cutting the text around it and leaving it as
    # is reproduces HF exactly.
    for c in differ:
        for f in FORMS:
            assert hf[f][idx[c]] == chr(c), ("not inert in HF", hex(c), f)
        assert c not in reorder_hf, ("reorders in HF", hex(c))
    inert = set(differ)
    # Pairs utf8proc composes but HF does not: keep the second char from joining.
    nfd_u = u8p_norm_each("NFD", [chr(c) for c in cps])
    comps = [(c, d) for c, d in zip(cps, nfd_u) if len(d) >= 2]
    back_u = u8p_norm_each("NFC", [d for _, d in comps])
    back_h = normalizers.NFC().normalize_str("\x01".join(d for _, d in comps)).split("\x01")
    for (c, d), bu, bh in zip(comps, back_u, back_h):
        if bu == chr(c) and bh != bu:
            inert.add(ord(d[-1]))
            log("composition %04X <- %s not done by HF" % (c, " ".join("%04X" % ord(x) for x in d)))
    # Quick-check sets: a text with none of these chars is left unchanged by
    # the form (chars with a mapping, a non-zero combining class, or that can
    # be the second part of a composition).
    second = set()
    for f in ("NFD", "NFKD"):
        for d in hf[f]:
            if len(d) >= 2:
                second.update(ord(x) for x in d[1:])
    unsafe = {}
    for f in FORMS:
        changed = {c for c, h in zip(cps, hf[f]) if h != chr(c)}
        unsafe[f] = {c for c in changed | set(reorder_hf) | second if c >= 0x80}
    return inert, unsafe


# ------------------------------------------------------------ output
def emit_set(name, cps, out):
    r = ranges(cps)
    out.append("static const uint32_t %s_r[][2] = {" % name)
    line = "   "
    for a, b in r:
        item = " {0x%X, 0x%X}," % (a, b)
        if len(line) + len(item) > 100:
            out.append(line)
            line = "   "
        line += item
    if not r:
        line += " {0, 0},"
    out.append(line)
    out.append("};")
    out.append("const tok_uset tok_uset_%s = {%s_r, %d};" % (name, name, len(r)))
    out.append("")


def main():
    out = []
    log("probing regex sets")
    rsets, rdiff = probe_regex_sets()
    log("probing Rust char sets")
    csets, lower = probe_rust_sets()
    log("probing normalization")
    inert, unsafe = probe_normalization()
    out.append("/* Generated by src/tokenizer/gen_unicode_data.py: do not edit. */")
    out.append("/* Probed from Hugging Face tokenizers %s; PCRE2 Unicode %s; utf8proc Unicode %s. */"
               % (tokenizers.__version__, pcre_unicode_version(), u8p.utf8proc_unicode_version().decode()))
    out.append('#include "tokenizer/tok_unicode.h"')
    out.append("")
    out.append('const char tok_unicode_hf_version[] = "%s";' % tokenizers.__version__)
    out.append('const char tok_unicode_pcre2_version[] = "%s";' % pcre_unicode_version())
    out.append('const char tok_unicode_utf8proc_version[] = "%s";' % u8p.utf8proc_unicode_version().decode())
    out.append("")
    for name in sorted(rsets):
        emit_set(name, rsets[name], out)
    for name in sorted(rdiff):
        emit_set("fastdiff_" + name, rdiff[name], out)
    for name in sorted(csets):
        emit_set(name, csets[name], out)
    emit_set("norm_inert", inert, out)
    for f in FORMS:
        emit_set("unsafe_" + f.lower(), unsafe[f], out)
    # Lowercase map: sorted by code point, up to 3 output code points.
    out.append("const tok_case_map tok_lowercase_map[] = {")
    n = 0
    for c in sorted(lower):
        o = [ord(x) for x in lower[c]]
        assert 1 <= len(o) <= 3
        o += [0] * (3 - len(o))
        out.append("    {0x%X, %d, {0x%X, 0x%X, 0x%X}}," % (c, len(lower[c]), o[0], o[1], o[2]))
        n += 1
    out.append("};")
    out.append("const uint32_t tok_lowercase_map_n = %d;" % n)
    print("\n".join(out))


if __name__ == "__main__":
    main()
