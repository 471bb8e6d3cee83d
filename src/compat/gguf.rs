//! GGUF header reader (versions 2 and 3): magic, version, tensor count, the typed key/value
//! metadata (strings, numbers, bools, arrays) and the tensor infos, which give the parameter
//! count and the quantization types without reading any tensor data.
//!
//! Format: <https://github.com/ggml-org/ggml/blob/master/docs/gguf.md>. Everything is
//! little-endian; strings are a `u64` length and UTF-8 bytes. The header of a real model can be
//! megabytes long (the tokenizer vocabulary is an array of strings), so [`parse`] says how many
//! bytes it needs when the prefix it got is too short, and the caller fetches more.
//!
//! Edges: pure; bytes in, facts out.

use std::collections::BTreeMap;

/// What the header says.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct GgufHeader {
    pub version: u32,
    pub tensor_count: u64,
    /// Scalar metadata values (arrays are skipped, only their length is kept as `Array(n)`).
    pub metadata: BTreeMap<String, Value>,
    /// Sum of the element counts of all tensors.
    pub tensor_parameters: u64,
    /// ggml type name -> number of tensors of that type (`Q4_K`, `F16`, ...).
    pub tensor_types: BTreeMap<String, u64>,
    /// Bytes the header (metadata and tensor infos) occupies.
    pub header_len: u64,
}

/// One metadata value.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    Int(i128),
    Float(f64),
    Bool(bool),
    Str(String),
    /// An array; only its length is kept.
    Array(u64),
}

impl GgufHeader {
    pub fn get_u64(&self, key: &str) -> Option<u64> {
        match self.metadata.get(key)? {
            Value::Int(n) if *n >= 0 => u64::try_from(*n).ok(),
            _ => None,
        }
    }
    pub fn get_str(&self, key: &str) -> Option<&str> {
        match self.metadata.get(key)? {
            Value::Str(text) => Some(text),
            _ => None,
        }
    }
    pub fn architecture(&self) -> Option<&str> {
        self.get_str("general.architecture")
    }
    /// `<arch>.<suffix>` as a number.
    pub fn arch_u64(&self, suffix: &str) -> Option<u64> {
        self.get_u64(&format!("{}.{suffix}", self.architecture()?))
    }
    /// `general.file_type` as llama.cpp names it (`Q4_K_M`), if known.
    pub fn file_type_name(&self) -> Option<&'static str> {
        file_type_name(self.get_u64("general.file_type")?)
    }
}

/// Why a prefix could not be parsed.
#[derive(Debug, Clone, PartialEq)]
pub enum ParseError {
    /// The prefix ends inside the header: at least this many bytes are needed.
    NeedMore(u64),
    /// Not a GGUF file, or a malformed one.
    Invalid(String),
}

/// Parses the header from a prefix of the file.
pub fn parse(bytes: &[u8]) -> Result<GgufHeader, ParseError> {
    let mut r = Reader { bytes, pos: 0 };
    let magic = r.take(4)?;
    if magic != b"GGUF" {
        return Err(ParseError::Invalid(
            "not a GGUF file (bad magic)".to_string(),
        ));
    }
    let version = r.u32()?;
    if !(2..=3).contains(&version) {
        return Err(ParseError::Invalid(format!(
            "GGUF version {version} is not supported (2 and 3 are)"
        )));
    }
    let tensor_count = r.u64()?;
    let kv_count = r.u64()?;
    let mut header = GgufHeader {
        version,
        tensor_count,
        ..GgufHeader::default()
    };
    for _ in 0..kv_count {
        let key = r.string()?;
        let kind = r.u32()?;
        let value = r.value(kind)?;
        header.metadata.insert(key, value);
    }
    for _ in 0..tensor_count {
        let _name = r.string()?;
        let dims = r.u32()?;
        if dims > 8 {
            return Err(ParseError::Invalid(format!(
                "a tensor with {dims} dimensions"
            )));
        }
        let mut elements: u64 = 1;
        for _ in 0..dims {
            elements = elements.saturating_mul(r.u64()?);
        }
        let kind = r.u32()?;
        let _offset = r.u64()?;
        header.tensor_parameters = header.tensor_parameters.saturating_add(elements);
        *header
            .tensor_types
            .entry(ggml_type_name(kind).to_string())
            .or_default() += 1;
    }
    header.header_len = r.pos as u64;
    Ok(header)
}

struct Reader<'a> {
    bytes: &'a [u8],
    pos: usize,
}

/// Longest string accepted: keys and values are short; a huge length means garbage.
const MAX_STRING: u64 = 64 << 20;

impl Reader<'_> {
    fn take(&mut self, n: u64) -> Result<&[u8], ParseError> {
        let end = (self.pos as u64).saturating_add(n);
        if end > self.bytes.len() as u64 {
            // Ask for what is known to be needed plus room, so growth converges quickly.
            return Err(ParseError::NeedMore(end));
        }
        let slice = &self.bytes[self.pos..end as usize];
        self.pos = end as usize;
        Ok(slice)
    }
    fn u32(&mut self) -> Result<u32, ParseError> {
        Ok(u32::from_le_bytes(
            self.take(4)?.try_into().expect("4 bytes"),
        ))
    }
    fn u64(&mut self) -> Result<u64, ParseError> {
        Ok(u64::from_le_bytes(
            self.take(8)?.try_into().expect("8 bytes"),
        ))
    }
    fn string(&mut self) -> Result<String, ParseError> {
        let len = self.u64()?;
        if len > MAX_STRING {
            return Err(ParseError::Invalid(format!("a string of {len} bytes")));
        }
        Ok(String::from_utf8_lossy(self.take(len)?).into_owned())
    }
    fn value(&mut self, kind: u32) -> Result<Value, ParseError> {
        let le = |bytes: &[u8]| {
            let mut buf = [0u8; 8];
            buf[..bytes.len()].copy_from_slice(bytes);
            u64::from_le_bytes(buf)
        };
        Ok(match kind {
            0 => Value::Int(i128::from(self.take(1)?[0])),
            1 => Value::Int(i128::from(self.take(1)?[0] as i8)),
            2 => Value::Int(i128::from(le(self.take(2)?) as u16)),
            3 => Value::Int(i128::from(le(self.take(2)?) as u16 as i16)),
            4 => Value::Int(i128::from(self.u32()?)),
            5 => Value::Int(i128::from(self.u32()? as i32)),
            6 => Value::Float(f64::from(f32::from_bits(self.u32()?))),
            7 => Value::Bool(self.take(1)?[0] != 0),
            8 => Value::Str(self.string()?),
            9 => {
                let item = self.u32()?;
                let count = self.u64()?;
                if item == 9 {
                    return Err(ParseError::Invalid("nested arrays".to_string()));
                }
                match fixed_size(item) {
                    Some(size) => {
                        self.take(size.saturating_mul(count))?;
                    }
                    None => {
                        for _ in 0..count {
                            self.value(item)?;
                        }
                    }
                }
                Value::Array(count)
            }
            10 => Value::Int(i128::from(self.u64()?)),
            11 => Value::Int(i128::from(self.u64()? as i64)),
            12 => Value::Float(f64::from_bits(self.u64()?)),
            other => {
                return Err(ParseError::Invalid(format!(
                    "unknown metadata value type {other}"
                )));
            }
        })
    }
}

/// Byte size of a fixed-size value type (`None` for strings).
fn fixed_size(kind: u32) -> Option<u64> {
    match kind {
        0 | 1 | 7 => Some(1),
        2 | 3 => Some(2),
        4..=6 => Some(4),
        10..=12 => Some(8),
        _ => None,
    }
}

/// ggml tensor type names (ggml.h `enum ggml_type`).
pub fn ggml_type_name(kind: u32) -> &'static str {
    match kind {
        0 => "F32",
        1 => "F16",
        2 => "Q4_0",
        3 => "Q4_1",
        6 => "Q5_0",
        7 => "Q5_1",
        8 => "Q8_0",
        9 => "Q8_1",
        10 => "Q2_K",
        11 => "Q3_K",
        12 => "Q4_K",
        13 => "Q5_K",
        14 => "Q6_K",
        15 => "Q8_K",
        16 => "IQ2_XXS",
        17 => "IQ2_XS",
        18 => "IQ3_XXS",
        19 => "IQ1_S",
        20 => "IQ4_NL",
        21 => "IQ3_S",
        22 => "IQ2_S",
        23 => "IQ4_XS",
        24 => "I8",
        25 => "I16",
        26 => "I32",
        27 => "I64",
        28 => "F64",
        29 => "IQ1_M",
        30 => "BF16",
        34 => "TQ1_0",
        35 => "TQ2_0",
        _ => "unknown",
    }
}

/// llama.cpp's `llama_ftype` names for `general.file_type`.
pub fn file_type_name(file_type: u64) -> Option<&'static str> {
    Some(match file_type {
        0 => "F32",
        1 => "F16",
        2 => "Q4_0",
        3 => "Q4_1",
        7 => "Q8_0",
        8 => "Q5_0",
        9 => "Q5_1",
        10 => "Q2_K",
        11 => "Q3_K_S",
        12 => "Q3_K_M",
        13 => "Q3_K_L",
        14 => "Q4_K_S",
        15 => "Q4_K_M",
        16 => "Q5_K_S",
        17 => "Q5_K_M",
        18 => "Q6_K",
        19 => "IQ2_XXS",
        20 => "IQ2_XS",
        21 => "Q2_K_S",
        22 => "IQ3_XS",
        23 => "IQ3_XXS",
        24 => "IQ1_S",
        25 => "IQ4_NL",
        26 => "IQ3_S",
        27 => "IQ3_M",
        28 => "IQ2_S",
        29 => "IQ2_M",
        30 => "IQ4_XS",
        31 => "IQ1_M",
        32 => "BF16",
        _ => return None,
    })
}

/// Unquantized type names: a model made only of these is not quantized.
pub fn is_unquantized(name: &str) -> bool {
    matches!(name, "F32" | "F16" | "BF16" | "F64")
}

/// Builds GGUF v3 bytes (for tests here and in `compat`): metadata as `(key, value)` with
/// `Value::Int` written as u32 (or u64 when `> u32::MAX`), and tensors as `(name, dims, type)`.
#[cfg(test)]
pub(crate) fn build(metadata: &[(&str, Value)], tensors: &[(&str, Vec<u64>, u32)]) -> Vec<u8> {
    fn string(out: &mut Vec<u8>, text: &str) {
        out.extend_from_slice(&(text.len() as u64).to_le_bytes());
        out.extend_from_slice(text.as_bytes());
    }
    let mut out = b"GGUF".to_vec();
    out.extend_from_slice(&3u32.to_le_bytes());
    out.extend_from_slice(&(tensors.len() as u64).to_le_bytes());
    out.extend_from_slice(&(metadata.len() as u64).to_le_bytes());
    for (key, value) in metadata {
        string(&mut out, key);
        match value {
            Value::Int(n) if *n > i128::from(u32::MAX) => {
                out.extend_from_slice(&10u32.to_le_bytes());
                out.extend_from_slice(&(*n as u64).to_le_bytes());
            }
            Value::Int(n) => {
                out.extend_from_slice(&4u32.to_le_bytes());
                out.extend_from_slice(&(*n as u32).to_le_bytes());
            }
            Value::Float(x) => {
                out.extend_from_slice(&6u32.to_le_bytes());
                out.extend_from_slice(&(*x as f32).to_le_bytes());
            }
            Value::Bool(b) => {
                out.extend_from_slice(&7u32.to_le_bytes());
                out.push(u8::from(*b));
            }
            Value::Str(text) => {
                out.extend_from_slice(&8u32.to_le_bytes());
                string(&mut out, text);
            }
            // An array of that many strings ("tok0", "tok1", ...), like a tokenizer vocabulary.
            Value::Array(n) => {
                out.extend_from_slice(&9u32.to_le_bytes());
                out.extend_from_slice(&8u32.to_le_bytes());
                out.extend_from_slice(&n.to_le_bytes());
                for i in 0..*n {
                    string(&mut out, &format!("tok{i}"));
                }
            }
        }
    }
    for (name, dims, kind) in tensors {
        string(&mut out, name);
        out.extend_from_slice(&(dims.len() as u32).to_le_bytes());
        for dim in dims {
            out.extend_from_slice(&dim.to_le_bytes());
        }
        out.extend_from_slice(&kind.to_le_bytes());
        out.extend_from_slice(&0u64.to_le_bytes());
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_fixture_headers_parse() {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join(
            "examples/hub/TheBloke/TinyLlama-1.1B-Chat-v1.0-GGUF/tinyllama-1.1b-chat-v1.0.Q4_K_M.gguf",
        );
        let bytes = fs_err::read(path).unwrap();
        let header = parse(&bytes).unwrap();
        assert_eq!(header.version, 3);
        assert_eq!(header.architecture(), Some("llama"));
        assert_eq!(header.arch_u64("block_count"), Some(22));
        assert_eq!(header.arch_u64("context_length"), Some(2048));
        assert_eq!(header.arch_u64("embedding_length"), Some(2048));
        assert_eq!(header.file_type_name(), Some("Q4_K_M"));
    }

    #[test]
    fn tensors_arrays_and_short_prefixes() {
        let bytes = build(
            &[
                ("general.architecture", Value::Str("llama".into())),
                ("tokenizer.ggml.tokens", Value::Array(1000)),
                ("llama.block_count", Value::Int(2)),
                ("big", Value::Int(1 << 40)),
                ("flag", Value::Bool(true)),
            ],
            &[
                ("token_embd.weight", vec![64, 1000], 12),
                ("blk.0.attn_q.weight", vec![64, 64], 12),
                ("output_norm.weight", vec![64], 0),
            ],
        );
        let header = parse(&bytes).unwrap();
        assert_eq!(header.tensor_count, 3);
        assert_eq!(header.tensor_parameters, 64_000 + 4096 + 64);
        assert_eq!(header.tensor_types["Q4_K"], 2);
        assert_eq!(header.tensor_types["F32"], 1);
        assert_eq!(header.metadata["tokenizer.ggml.tokens"], Value::Array(1000));
        assert_eq!(header.get_u64("big"), Some(1 << 40));
        assert_eq!(header.metadata["flag"], Value::Bool(true));
        assert_eq!(header.header_len, bytes.len() as u64);
        // Every shorter prefix asks for more, and for more than it has.
        for cut in [0, 3, 10, 30, 200, bytes.len() - 1] {
            match parse(&bytes[..cut]) {
                Err(ParseError::NeedMore(n)) => assert!(n > cut as u64, "{cut}: {n}"),
                other => panic!("{cut}: {other:?}"),
            }
        }
    }

    #[test]
    fn garbage_is_invalid() {
        assert!(matches!(
            parse(b"GGML\x03\0\0\0"),
            Err(ParseError::Invalid(_))
        ));
        let mut v1 = b"GGUF".to_vec();
        v1.extend_from_slice(&1u32.to_le_bytes());
        assert!(matches!(parse(&v1), Err(ParseError::Invalid(_))));
    }
}
