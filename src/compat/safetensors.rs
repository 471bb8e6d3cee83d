//! safetensors header reader: an 8-byte little-endian header length, then that many bytes of
//! JSON mapping tensor names to `{dtype, shape, data_offsets}` (plus an optional
//! `__metadata__`). Gives the parameter count and the bytes per dtype without reading tensors.
//!
//! Format: <https://github.com/huggingface/safetensors#format>.
//!
//! Edges: pure; bytes in, facts out.

use std::collections::BTreeMap;

/// The format caps the header at 100 MB; anything larger is not a safetensors file.
pub const MAX_HEADER_LEN: u64 = 100_000_000;

/// What the header says.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct SafetensorsHeader {
    /// Bytes of the JSON header (the file's first `8 + header_len` bytes are the header).
    pub header_len: u64,
    pub tensor_count: u64,
    pub parameters: u64,
    /// dtype (`F16`, `BF16`, `F32`, `I8`, ...) -> number of elements of that dtype.
    pub parameters_by_dtype: BTreeMap<String, u64>,
    /// Bytes of tensor data the header describes.
    pub data_bytes: u64,
}

/// The length of the JSON header, from the file's first 8 bytes.
pub fn header_len(prefix: &[u8]) -> Result<u64, String> {
    let bytes: [u8; 8] = prefix
        .get(..8)
        .and_then(|b| b.try_into().ok())
        .ok_or("shorter than 8 bytes: not a safetensors file")?;
    let len = u64::from_le_bytes(bytes);
    if !(2..=MAX_HEADER_LEN).contains(&len) {
        return Err(format!(
            "header length {len} is out of range: not a safetensors file"
        ));
    }
    Ok(len)
}

/// Parses the header from a prefix holding at least `8 + header_len` bytes.
pub fn parse(prefix: &[u8]) -> Result<SafetensorsHeader, String> {
    let len = header_len(prefix)?;
    let json = prefix.get(8..8 + len as usize).ok_or_else(|| {
        format!(
            "the prefix holds {} of the {len} header bytes",
            prefix.len().saturating_sub(8)
        )
    })?;
    let map: BTreeMap<String, serde_json::Value> = serde_json::from_slice(json)
        .map_err(|error| format!("the header is not a JSON object: {error}"))?;
    let mut header = SafetensorsHeader {
        header_len: len,
        ..SafetensorsHeader::default()
    };
    for (name, tensor) in map {
        if name == "__metadata__" {
            continue;
        }
        let dtype = tensor["dtype"]
            .as_str()
            .ok_or_else(|| format!("tensor `{name}` has no dtype"))?;
        let shape = tensor["shape"]
            .as_array()
            .ok_or_else(|| format!("tensor `{name}` has no shape"))?;
        let mut elements: u64 = 1;
        for dim in shape {
            let dim = dim
                .as_u64()
                .ok_or_else(|| format!("tensor `{name}` has a bad shape"))?;
            elements = elements.saturating_mul(dim);
        }
        let offsets = tensor["data_offsets"].as_array();
        if let Some([start, end]) = offsets.map(Vec::as_slice)
            && let (Some(start), Some(end)) = (start.as_u64(), end.as_u64())
        {
            header.data_bytes += end.saturating_sub(start);
        }
        header.tensor_count += 1;
        header.parameters = header.parameters.saturating_add(elements);
        *header
            .parameters_by_dtype
            .entry(dtype.to_string())
            .or_default() += elements;
    }
    Ok(header)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_fixture_header_parses() {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("examples/hub/acme/tiny-bert/model.safetensors");
        let bytes = fs_err::read(path).unwrap();
        let header = parse(&bytes).unwrap();
        assert!(header.tensor_count > 0);
        assert_eq!(
            header.parameters_by_dtype.keys().collect::<Vec<_>>(),
            ["F32"]
        );
        // F32: 4 bytes per parameter, and the data follows the header exactly.
        assert_eq!(header.data_bytes, header.parameters * 4);
        assert_eq!(
            8 + header.header_len + header.data_bytes,
            bytes.len() as u64
        );
    }

    #[test]
    fn shapes_multiply_and_dtypes_add_up() {
        let json = br#"{"__metadata__":{"format":"pt"},"a":{"dtype":"F16","shape":[3,4],"data_offsets":[0,24]},"b":{"dtype":"BF16","shape":[5],"data_offsets":[24,34]},"s":{"dtype":"F16","shape":[],"data_offsets":[34,36]}}"#;
        let mut bytes = (json.len() as u64).to_le_bytes().to_vec();
        bytes.extend_from_slice(json);
        let header = parse(&bytes).unwrap();
        assert_eq!(header.tensor_count, 3);
        assert_eq!(header.parameters, 12 + 5 + 1);
        assert_eq!(header.parameters_by_dtype["F16"], 13);
        assert_eq!(header.data_bytes, 36);
        assert!(parse(&bytes[..20]).unwrap_err().contains("header bytes"));
        assert!(header_len(b"\xff\xff\xff\xff\xff\xff\xff\xff").is_err());
        assert!(header_len(b"abc").is_err());
    }
}
