//! Dedup digests: BLAKE2b with a 16-byte output over an event id's UTF-8,
//! the same bytes as Python's `hashlib.blake2b(id, digest_size=16)`, which
//! the dedup window (tally/core/dedup.py) and its stored segments hold.

pub fn digest(id: &str, out: &mut [u8; 16]) {
    let hash = blake2b_simd::Params::new()
        .hash_length(16)
        .hash(id.as_bytes());
    out.copy_from_slice(hash.as_bytes());
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matches_pythons_hashlib() {
        // hashlib.blake2b(b"e1", digest_size=16).hexdigest()
        let mut out = [0u8; 16];
        digest("e1", &mut out);
        let hex: String = out.iter().map(|b| format!("{b:02x}")).collect();
        assert_eq!(hex, PYTHON_E1);
    }

    const PYTHON_E1: &str = "afdd4403c41069df839dbe2249f98aee";
}
