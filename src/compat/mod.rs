//! `kmm compatibility`: can this machine run a model? Facts of the model are read from its
//! files, not guessed from its name: the GGUF header (architecture, parameter count, quantization,
//! context length, layer and attention sizes) or the safetensors headers (dtypes and shapes ->
//! parameter count) plus `config.json`, each fetched with small `Range` requests through the hub
//! ([`crate::hub::HubClient::fetch_range`]): 64 KiB first, then only the missing bytes when a
//! header is longer. Nothing large is downloaded.
//!
//! Memory estimate (said in [`Estimate::method`] for every report):
//! - weights: the size of the weight files (for GGUF repos: the largest selected `.gguf`, since
//!   the files of a GGUF repo are alternative quantizations);
//! - KV cache for the default context, `min(context_length, 4096)` tokens:
//!   `2 (K and V) x layers x context x kv_heads x head_dim x 2 bytes (f16)`, with
//!   `head_dim = embedding / heads`;
//! - overhead: 10% of the weights + 100 MB (compute buffers, runtime); on a GPU another
//!   300 MB for the CUDA context.
//!
//! Verdict: `ok`, or `warnings` with a recommendation each (no GPU and unquantized weights of
//! 1 GB or more -> prefer a quantized GGUF; RAM or VRAM below the estimate; no AVX2 for llama.cpp CPU builds;
//! too little free disk). Warnings never fail a command unless the user asks with
//! `--force-compat`, which turns them into `E_COMPAT`.
//!
//! Edges: [`inspect`] reads the hub; [`estimate`] and [`check`] are pure and take fixed
//! [`MachineFacts`] so they can be tested with any machine.

pub mod gguf;
pub mod safetensors;

use serde::Serialize;

use crate::error::{Error, Result};
use crate::hub::HubClient;
use crate::plan::{DesiredModel, format_bytes};
use crate::sys::MachineFacts;
use crate::upstream::UpstreamFile;

/// First window of a header read.
pub const FIRST_FETCH: u64 = 64 << 10;
/// Largest header kmm reads (real GGUF vocabularies take a few MB).
pub const MAX_HEADER_FETCH: u64 = 64 << 20;
/// Context the KV cache is estimated for, at most.
pub const DEFAULT_CONTEXT: u64 = 4096;
/// Unquantized weights from this size on get the "no GPU" warning; smaller models (BERT-class
/// classifiers) run fine on a CPU.
pub const NO_GPU_WARN_BYTES: u64 = 1_000_000_000;
/// Largest `config.json` read.
const MAX_CONFIG: u64 = 1 << 20;

/// The weight format of a model.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Format {
    Gguf,
    Safetensors,
    /// Neither (PyTorch `.bin`, ONNX, ...): sizes only.
    Other,
}

/// What kmm learned about a model from its files.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ModelFacts {
    pub model: String,
    pub commit: String,
    pub format: Format,
    /// All selected files.
    pub download_bytes: u64,
    /// The weight files the estimate is for.
    pub weight_files: Vec<String>,
    pub weights_bytes: u64,
    pub architecture: Option<String>,
    pub parameter_count: Option<u64>,
    /// `Q4_K_M` (GGUF file type), else the tensor types / dtypes joined with `+`.
    pub quantization: Option<String>,
    /// True when the weights are quantized (below 16 bits).
    pub quantized: bool,
    pub context_length: Option<u64>,
    pub layers: Option<u64>,
    pub embedding: Option<u64>,
    pub heads: Option<u64>,
    pub kv_heads: Option<u64>,
    /// Header bytes fetched to learn all this.
    pub header_bytes_fetched: u64,
}

/// Memory needed to run the model.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Estimate {
    pub weights_bytes: u64,
    pub context: Option<u64>,
    pub kv_cache_bytes: u64,
    pub overhead_bytes: u64,
    /// RAM to run on the CPU.
    pub cpu_ram_bytes: u64,
    /// VRAM to offload everything to one GPU.
    pub gpu_vram_bytes: u64,
    /// How the numbers were computed, for humans.
    pub method: String,
}

/// One thing that may keep the model from running well here.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Warning {
    /// `no_gpu`, `ram`, `vram`, `avx2`, `disk`.
    pub kind: String,
    pub message: String,
    pub recommendation: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Verdict {
    Ok,
    Warnings,
}

/// The whole answer of `kmm compatibility`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Report {
    pub verdict: Verdict,
    pub warnings: Vec<Warning>,
    pub estimate: Estimate,
    pub model: ModelFacts,
    pub machine: MachineFacts,
}

impl Report {
    /// `E_COMPAT` listing the warnings (for `--force-compat`), or `Ok` when there are none.
    pub fn enforce(&self) -> Result<()> {
        if self.warnings.is_empty() {
            return Ok(());
        }
        let mut error = Error::new(
            crate::error::ErrorCode::Compat,
            format!(
                "{} may not run on this machine: {}",
                self.model.model,
                self.warnings
                    .iter()
                    .map(|w| w.message.as_str())
                    .collect::<Vec<_>>()
                    .join("; ")
            ),
        );
        for warning in &self.warnings {
            error = error.caused_by(format!("{}: {}", warning.kind, warning.recommendation));
        }
        Err(error.with_hint("drop --force-compat to install anyway, or follow the recommendations"))
    }
}

/// Reads the headers of `model`'s weight files through the hub and returns what they say.
pub async fn inspect(hub: &HubClient, model: &DesiredModel) -> Result<ModelFacts> {
    let mut facts = ModelFacts {
        model: model.id.clone(),
        commit: model.commit.clone(),
        format: Format::Other,
        download_bytes: model.files.iter().map(|f| f.size).sum(),
        weight_files: Vec::new(),
        weights_bytes: 0,
        architecture: None,
        parameter_count: None,
        quantization: None,
        quantized: false,
        context_length: None,
        layers: None,
        embedding: None,
        heads: None,
        kv_heads: None,
        header_bytes_fetched: 0,
    };
    let ggufs: Vec<&UpstreamFile> = model
        .files
        .iter()
        .filter(|f| crate::layout::is_gguf(&f.path))
        .collect();
    let safetensors: Vec<&UpstreamFile> = model
        .files
        .iter()
        .filter(|f| f.path.ends_with(".safetensors"))
        .collect();
    if let Some(file) = ggufs.iter().max_by_key(|f| (f.size, &f.path)) {
        let (header, fetched) = read_gguf(hub, model, file).await?;
        facts.header_bytes_fetched += fetched;
        apply_gguf(&mut facts, file, &header);
    } else if !safetensors.is_empty() {
        facts.format = Format::Safetensors;
        let mut dtypes = std::collections::BTreeMap::<String, u64>::new();
        let mut parameters = 0u64;
        for file in &safetensors {
            let (header, fetched) = read_safetensors(hub, model, file).await?;
            facts.header_bytes_fetched += fetched;
            parameters += header.parameters;
            for (dtype, n) in header.parameters_by_dtype {
                *dtypes.entry(dtype).or_default() += n;
            }
            facts.weight_files.push(file.path.clone());
            facts.weights_bytes += file.size;
        }
        facts.parameter_count = Some(parameters);
        facts.quantized = !dtypes.is_empty()
            && dtypes
                .keys()
                .all(|d| !matches!(d.as_str(), "F64" | "F32" | "F16" | "BF16"));
        facts.quantization = Some(dtypes.into_keys().collect::<Vec<_>>().join("+"));
        if let Some(config) = model.files.iter().find(|f| f.path == "config.json") {
            let len = config.size.min(MAX_CONFIG);
            let bytes = hub
                .fetch_range(&model.id, &model.commit, &config.path, 0, len)
                .await?;
            facts.header_bytes_fetched += bytes.len() as u64;
            if let Ok(config) = serde_json::from_slice::<serde_json::Value>(&bytes) {
                apply_config(&mut facts, &config);
            }
        }
    } else {
        let weights: Vec<&UpstreamFile> = model
            .files
            .iter()
            .filter(|f| {
                [".bin", ".pt", ".pth", ".onnx", ".h5", ".msgpack"]
                    .iter()
                    .any(|ext| f.path.ends_with(ext))
            })
            .collect();
        facts.weight_files = weights.iter().map(|f| f.path.clone()).collect();
        facts.weights_bytes = weights.iter().map(|f| f.size).sum();
    }
    Ok(facts)
}

/// The first window of a header read: [`FIRST_FETCH`] bytes, or the whole file when it is smaller.
async fn fetch_first_window(
    hub: &HubClient,
    model: &DesiredModel,
    file: &UpstreamFile,
) -> Result<Vec<u8>> {
    hub.fetch_range(
        &model.id,
        &model.commit,
        &file.path,
        0,
        FIRST_FETCH.min(file.size),
    )
    .await
}

/// Fetches a GGUF header: a first window, then only the missing bytes until it parses.
async fn read_gguf(
    hub: &HubClient,
    model: &DesiredModel,
    file: &UpstreamFile,
) -> Result<(gguf::GgufHeader, u64)> {
    let mut bytes = fetch_first_window(hub, model, file).await?;
    loop {
        match gguf::parse(&bytes) {
            Ok(header) => return Ok((header, bytes.len() as u64)),
            Err(gguf::ParseError::Invalid(reason)) => {
                return Err(Error::schema(format!(
                    "{} of {}: {reason}",
                    file.path, model.id
                )));
            }
            Err(gguf::ParseError::NeedMore(needed)) => {
                let have = bytes.len() as u64;
                if needed > MAX_HEADER_FETCH || have >= file.size {
                    return Err(Error::schema(format!(
                        "{} of {}: the GGUF header is longer than {} (or the file ends inside it)",
                        file.path,
                        model.id,
                        format_bytes(MAX_HEADER_FETCH)
                    )));
                }
                // Grow geometrically so a long vocabulary takes a few requests, not thousands.
                let want = needed.max(have * 2).min(file.size).min(MAX_HEADER_FETCH);
                let more = hub
                    .fetch_range(&model.id, &model.commit, &file.path, have, want - have)
                    .await?;
                if more.is_empty() {
                    return Err(Error::schema(format!(
                        "{} of {}: the file ends inside its GGUF header",
                        file.path, model.id
                    )));
                }
                bytes.extend_from_slice(&more);
            }
        }
    }
}

/// Fetches a safetensors header: 64 KiB, then the rest of the JSON if it is longer.
async fn read_safetensors(
    hub: &HubClient,
    model: &DesiredModel,
    file: &UpstreamFile,
) -> Result<(safetensors::SafetensorsHeader, u64)> {
    let bad = |reason: String| Error::schema(format!("{} of {}: {reason}", file.path, model.id));
    let mut bytes = fetch_first_window(hub, model, file).await?;
    let len = safetensors::header_len(&bytes).map_err(bad)?;
    let needed = 8 + len;
    if needed > file.size {
        return Err(bad(format!(
            "header of {len} bytes in a file of {}",
            file.size
        )));
    }
    let have = bytes.len() as u64;
    if needed > have {
        let more = hub
            .fetch_range(&model.id, &model.commit, &file.path, have, needed - have)
            .await?;
        bytes.extend_from_slice(&more);
    }
    let header = safetensors::parse(&bytes).map_err(bad)?;
    Ok((header, bytes.len() as u64))
}

fn apply_gguf(facts: &mut ModelFacts, file: &UpstreamFile, header: &gguf::GgufHeader) {
    facts.format = Format::Gguf;
    facts.weight_files = vec![file.path.clone()];
    facts.weights_bytes = file.size;
    facts.architecture = header.architecture().map(str::to_string);
    facts.parameter_count = header
        .get_u64("general.parameter_count")
        .or((header.tensor_count > 0).then_some(header.tensor_parameters));
    let types: Vec<&str> = header.tensor_types.keys().map(String::as_str).collect();
    facts.quantization = header
        .file_type_name()
        .map(str::to_string)
        .or_else(|| (!types.is_empty()).then(|| types.join("+")));
    facts.quantized = match header.file_type_name() {
        Some(name) => !gguf::is_unquantized(name),
        None => types
            .iter()
            .any(|t| !gguf::is_unquantized(t) && *t != "unknown"),
    };
    facts.context_length = header.arch_u64("context_length");
    facts.layers = header.arch_u64("block_count");
    facts.embedding = header.arch_u64("embedding_length");
    facts.heads = header.arch_u64("attention.head_count");
    facts.kv_heads = header.arch_u64("attention.head_count_kv");
}

/// Sizes from `config.json`, under the names the common architectures use.
fn apply_config(facts: &mut ModelFacts, config: &serde_json::Value) {
    let first = |keys: &[&str]| keys.iter().find_map(|k| config.get(*k)?.as_u64());
    facts.architecture = config
        .get("model_type")
        .and_then(|v| v.as_str())
        .map(str::to_string);
    facts.layers = first(&["num_hidden_layers", "n_layer", "n_layers", "num_layers"]);
    facts.context_length = first(&["max_position_embeddings", "n_positions", "n_ctx"]);
    facts.embedding = first(&["hidden_size", "n_embd", "dim", "d_model"]);
    facts.heads = first(&["num_attention_heads", "n_head", "n_heads"]);
    facts.kv_heads = first(&["num_key_value_heads", "n_head_kv"]);
}

/// The memory estimate for `facts` (see the module doc for the formula).
pub fn estimate(facts: &ModelFacts) -> Estimate {
    let weights = facts.weights_bytes;
    let context = facts.context_length.map(|c| c.min(DEFAULT_CONTEXT));
    let kv = match (facts.layers, context, facts.embedding, facts.heads) {
        (Some(layers), Some(ctx), Some(embedding), Some(heads)) if heads > 0 => {
            let kv_heads = facts.kv_heads.unwrap_or(heads);
            let head_dim = embedding / heads;
            Some((
                2 * layers * ctx * kv_heads * head_dim * 2,
                layers,
                ctx,
                kv_heads,
                head_dim,
            ))
        }
        _ => None,
    };
    let overhead = weights / 10 + 100_000_000;
    let kv_bytes = kv.map_or(0, |k| k.0);
    let cpu = weights + kv_bytes + overhead;
    let weight_source = match facts.weight_files.as_slice() {
        [] => "no weight files recognised".to_string(),
        [one] => format!("size of {one}"),
        many => format!("total size of {} weight files", many.len()),
    };
    let kv_text = match kv {
        Some((bytes, layers, ctx, kv_heads, head_dim)) => format!(
            "KV cache {} = 2 x {layers} layers x {ctx} tokens x {kv_heads} KV heads x {head_dim} head dim x 2 bytes (f16)",
            format_bytes(bytes)
        ),
        None => "KV cache not estimated (layer and attention sizes unknown)".to_string(),
    };
    Estimate {
        weights_bytes: weights,
        context,
        kv_cache_bytes: kv_bytes,
        overhead_bytes: overhead,
        cpu_ram_bytes: cpu,
        gpu_vram_bytes: cpu + 300_000_000,
        method: format!(
            "weights {} ({weight_source}) + {kv_text} + overhead {} (10% of weights + 100 MB); GPU adds 300 MB for the CUDA context",
            format_bytes(weights),
            format_bytes(overhead)
        ),
    }
}

/// Judges `facts` against `machine`.
pub fn check(machine: &MachineFacts, facts: ModelFacts) -> Report {
    let estimate = estimate(&facts);
    let mut warnings = Vec::new();
    let best_gpu = machine.gpus.iter().map(|g| g.memory_total_bytes).max();
    let fits_gpu = best_gpu.is_some_and(|vram| vram >= estimate.gpu_vram_bytes);
    if machine.gpus.is_empty() && !facts.quantized && facts.weights_bytes >= NO_GPU_WARN_BYTES {
        warnings.push(Warning {
            kind: "no_gpu".to_string(),
            message: format!(
                "no NVIDIA GPU found and the weights are not quantized ({})",
                facts.quantization.as_deref().unwrap_or("unknown precision")
            ),
            recommendation:
                "prefer a quantized GGUF build of this model (e.g. Q4_K_M) for CPU inference with llama.cpp"
                    .to_string(),
        });
    }
    if !fits_gpu && machine.available_ram_bytes < estimate.cpu_ram_bytes {
        warnings.push(Warning {
            kind: "ram".to_string(),
            message: format!(
                "about {} of RAM needed on the CPU, {} available ({} total)",
                format_bytes(estimate.cpu_ram_bytes),
                format_bytes(machine.available_ram_bytes),
                format_bytes(machine.total_ram_bytes)
            ),
            recommendation: "choose a smaller quantization or a smaller model, or free memory"
                .to_string(),
        });
    }
    if let Some(vram) = best_gpu
        && vram < estimate.gpu_vram_bytes
    {
        warnings.push(Warning {
            kind: "vram".to_string(),
            message: format!(
                "about {} of VRAM needed to offload everything, the largest GPU has {}",
                format_bytes(estimate.gpu_vram_bytes),
                format_bytes(vram)
            ),
            recommendation:
                "offload only some layers (llama.cpp `-ngl`) or choose a smaller quantization"
                    .to_string(),
        });
    }
    if facts.format == Format::Gguf && machine.arch == "x86_64" && !machine.has_feature("avx2") {
        warnings.push(Warning {
            kind: "avx2".to_string(),
            message: "the CPU has no AVX2, which llama.cpp's prebuilt CPU builds need".to_string(),
            recommendation:
                "build llama.cpp for this CPU (cmake -DGGML_NATIVE=ON) or run the model on a GPU"
                    .to_string(),
        });
    }
    if let Some(free) = machine.free_disk_bytes
        && free < facts.download_bytes
    {
        warnings.push(Warning {
            kind: "disk".to_string(),
            message: format!(
                "the files take {}, only {} is free under the models directory",
                format_bytes(facts.download_bytes),
                format_bytes(free)
            ),
            recommendation:
                "free space (`kmm gc --dry-run` shows what could go) or narrow `include` globs"
                    .to_string(),
        });
    }
    Report {
        verdict: if warnings.is_empty() {
            Verdict::Ok
        } else {
            Verdict::Warnings
        },
        warnings,
        estimate,
        model: facts,
        machine: machine.clone(),
    }
}

/// The human text of a report.
pub fn render_text(report: &Report) -> String {
    let m = &report.model;
    let machine = &report.machine;
    let mut out = format!("{} @ {}\n", m.model, &m.commit[..m.commit.len().min(7)]);
    let opt = |v: Option<u64>| v.map_or_else(|| "?".to_string(), |v| v.to_string());
    out.push_str(&format!(
        "  model:    {:?}, {}, {} parameters, {}, context {}, {} layers, embedding {}, heads {}/{} (KV)\n",
        m.format,
        m.architecture.as_deref().unwrap_or("unknown architecture"),
        m.parameter_count.map_or_else(|| "?".to_string(), |p| format!("{:.2}B", p as f64 / 1e9)),
        m.quantization.as_deref().unwrap_or("unknown precision"),
        opt(m.context_length),
        opt(m.layers),
        opt(m.embedding),
        opt(m.heads),
        opt(m.kv_heads),
    ));
    out.push_str(&format!(
        "  needs:    {} RAM on CPU, {} VRAM on GPU; {} of files\n",
        format_bytes(report.estimate.cpu_ram_bytes),
        format_bytes(report.estimate.gpu_vram_bytes),
        format_bytes(m.download_bytes)
    ));
    out.push_str(&format!("  estimate: {}\n", report.estimate.method));
    let gpus = if machine.gpus.is_empty() {
        machine
            .gpu_note
            .clone()
            .unwrap_or_else(|| "no GPU".to_string())
    } else {
        machine
            .gpus
            .iter()
            .map(|g| {
                format!(
                    "{} ({} free of {})",
                    g.name,
                    format_bytes(g.memory_free_bytes),
                    format_bytes(g.memory_total_bytes)
                )
            })
            .collect::<Vec<_>>()
            .join(", ")
    };
    out.push_str(&format!(
        "  machine:  {} RAM ({} available), {} ({} cores, {}; {}), {} free disk; {gpus}\n",
        format_bytes(machine.total_ram_bytes),
        format_bytes(machine.available_ram_bytes),
        if machine.cpu_model.is_empty() {
            "unknown CPU"
        } else {
            &machine.cpu_model
        },
        machine.cpu_cores,
        machine.arch,
        if machine.cpu_features.is_empty() {
            "no listed features".to_string()
        } else {
            machine.cpu_features.join(" ")
        },
        machine
            .free_disk_bytes
            .map_or_else(|| "unknown".to_string(), format_bytes),
    ));
    out.push_str(&format!(
        "  header bytes read: {}\n",
        m.header_bytes_fetched
    ));
    if report.warnings.is_empty() {
        out.push_str("Verdict: ok\n");
    } else {
        out.push_str(&format!("Verdict: {} warning(s)\n", report.warnings.len()));
        for warning in &report.warnings {
            out.push_str(&format!(
                "  ! {}\n    -> {}\n",
                warning.message, warning.recommendation
            ));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn facts() -> ModelFacts {
        ModelFacts {
            model: "org/m".to_string(),
            commit: "c".repeat(40),
            format: Format::Gguf,
            download_bytes: 4_000_000_000,
            weight_files: vec!["m.Q4_K_M.gguf".to_string()],
            weights_bytes: 4_000_000_000,
            architecture: Some("llama".to_string()),
            parameter_count: Some(7_000_000_000),
            quantization: Some("Q4_K_M".to_string()),
            quantized: true,
            context_length: Some(32_768),
            layers: Some(32),
            embedding: Some(4096),
            heads: Some(32),
            kv_heads: None,
            header_bytes_fetched: 65_536,
        }
    }

    #[test]
    fn estimate_caps_the_context_and_defaults_kv_heads_to_heads() {
        let estimate = estimate(&facts());
        assert_eq!(estimate.context, Some(DEFAULT_CONTEXT));
        assert_eq!(estimate.kv_cache_bytes, 2 * 32 * 4096 * 32 * 128 * 2);
        assert_eq!(estimate.overhead_bytes, 400_000_000 + 100_000_000);
        assert_eq!(
            estimate.cpu_ram_bytes,
            4_000_000_000 + estimate.kv_cache_bytes + 500_000_000
        );
        assert_eq!(
            estimate.gpu_vram_bytes,
            estimate.cpu_ram_bytes + 300_000_000
        );
        let mut unknown = facts();
        unknown.layers = None;
        let estimate = super::estimate(&unknown);
        assert_eq!(estimate.kv_cache_bytes, 0);
        assert!(
            estimate.method.contains("KV cache not estimated"),
            "{}",
            estimate.method
        );
    }

    #[test]
    fn the_text_report_names_facts_estimate_and_warnings() {
        let machine = MachineFacts {
            total_ram_bytes: 8_000_000_000,
            available_ram_bytes: 2_000_000_000,
            cpu_model: "Test CPU".to_string(),
            cpu_cores: 4,
            arch: "x86_64".to_string(),
            cpu_features: vec!["avx".to_string()],
            free_disk_bytes: Some(100_000_000_000),
            gpus: vec![],
            gpu_note: Some("no NVIDIA GPU found (test)".to_string()),
        };
        let report = check(&machine, facts());
        assert_eq!(report.verdict, Verdict::Warnings);
        let kinds: Vec<&str> = report.warnings.iter().map(|w| w.kind.as_str()).collect();
        assert_eq!(kinds, ["ram", "avx2"]);
        let text = render_text(&report);
        assert!(text.contains("7.00B parameters, Q4_K_M"), "{text}");
        assert!(text.contains("no NVIDIA GPU found (test)"), "{text}");
        assert!(text.contains("Verdict: 2 warning(s)"), "{text}");
        assert!(text.contains("estimate: weights 4.0 GB"), "{text}");
        let error = report.enforce().unwrap_err();
        assert_eq!(error.code(), crate::error::ErrorCode::Compat);
        assert_eq!(error.causes().len(), 2);
    }
}
