//! Dedup digests: BLAKE2b with a 16-byte output over an event id's UTF-8,
//! the same bytes as Python's `hashlib.blake2b(id, digest_size=16)`, which
//! the dedup window (tally/core/dedup.py) and its stored segments hold.

use blake2::digest::{Update, VariableOutput};
use blake2::Blake2bVar;

pub fn digest(id: &str, out: &mut [u8; 16]) {
    let mut hasher = Blake2bVar::new(16).expect("16 is a valid BLAKE2b output size");
    hasher.update(id.as_bytes());
    hasher
        .finalize_variable(out)
        .expect("the output is 16 bytes");
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
