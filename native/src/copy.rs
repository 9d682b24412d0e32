//! PostgreSQL's binary COPY format, written straight from the deltas.
//!
//! A flush stages its rows in TEMP tables by `COPY ... FROM STDIN (FORMAT
//! binary)`. Building Python lists and letting the driver encode each value
//! cost the worker more CPU than the core's aggregation did; this writes the
//! same rows as one byte string. The format: a 19-byte header, then per row
//! an int16 field count and, per field, an int32 length (-1 for NULL) and
//! the value's bytes (text as UTF-8, int8 as 8 big-endian bytes), then an
//! int16 -1 trailer. All integers are big-endian.

const SIGNATURE: &[u8; 11] = b"PGCOPY\n\xff\r\n\0";

pub struct CopyWriter {
    buf: Vec<u8>,
    fields: i16,
    rows: usize,
}

impl CopyWriter {
    /// A payload of rows of `fields` columns each.
    pub fn new(fields: i16) -> CopyWriter {
        let mut buf = Vec::with_capacity(4096);
        buf.extend_from_slice(SIGNATURE);
        buf.extend_from_slice(&0i32.to_be_bytes()); // flags: no OIDs
        buf.extend_from_slice(&0i32.to_be_bytes()); // header extension length
        CopyWriter {
            buf,
            fields,
            rows: 0,
        }
    }

    /// Start a row; its `fields` values follow.
    pub fn row(&mut self) {
        self.buf.extend_from_slice(&self.fields.to_be_bytes());
        self.rows += 1;
    }

    pub fn text(&mut self, value: &str) {
        // Texts here are keys, members and numbers, each far below 2 GiB.
        let len = i32::try_from(value.len()).expect("a field under 2 GiB");
        self.buf.extend_from_slice(&len.to_be_bytes());
        self.buf.extend_from_slice(value.as_bytes());
    }

    pub fn int8(&mut self, value: i64) {
        self.buf.extend_from_slice(&8i32.to_be_bytes());
        self.buf.extend_from_slice(&value.to_be_bytes());
    }

    pub fn null(&mut self) {
        self.buf.extend_from_slice(&(-1i32).to_be_bytes());
    }

    pub fn opt_text(&mut self, value: Option<&str>) {
        match value {
            Some(text) => self.text(text),
            None => self.null(),
        }
    }

    pub fn opt_int8(&mut self, value: Option<i64>) {
        match value {
            Some(n) => self.int8(n),
            None => self.null(),
        }
    }

    /// Rows written so far.
    pub fn rows(&self) -> usize {
        self.rows
    }

    /// The whole payload, trailer included.
    pub fn finish(mut self) -> Vec<u8> {
        self.buf.extend_from_slice(&(-1i16).to_be_bytes());
        self.buf
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_empty_payload_is_header_and_trailer() {
        let bytes = CopyWriter::new(3).finish();
        assert_eq!(&bytes[..11], b"PGCOPY\n\xff\r\n\0");
        assert_eq!(&bytes[11..19], &[0u8; 8]);
        assert_eq!(&bytes[19..], &[0xff, 0xff]);
    }

    #[test]
    fn a_row_is_its_count_then_length_prefixed_fields() {
        let mut w = CopyWriter::new(3);
        w.row();
        w.text("é");
        w.int8(-2);
        w.null();
        assert_eq!(w.rows(), 1);
        let bytes = w.finish();
        let row = &bytes[19..bytes.len() - 2];
        let mut expected = vec![0, 3];
        expected.extend_from_slice(&[0, 0, 0, 2, 0xc3, 0xa9]);
        expected.extend_from_slice(&[0, 0, 0, 8]);
        expected.extend_from_slice(&(-2i64).to_be_bytes());
        expected.extend_from_slice(&[0xff, 0xff, 0xff, 0xff]);
        assert_eq!(row, expected.as_slice());
    }

    #[test]
    fn optional_fields_write_null_or_the_value() {
        let mut w = CopyWriter::new(2);
        w.row();
        w.opt_text(None);
        w.opt_int8(Some(7));
        let bytes = w.finish();
        let row = &bytes[19..bytes.len() - 2];
        let mut expected = vec![0, 2, 0xff, 0xff, 0xff, 0xff, 0, 0, 0, 8];
        expected.extend_from_slice(&7i64.to_be_bytes());
        assert_eq!(row, expected.as_slice());
    }
}
