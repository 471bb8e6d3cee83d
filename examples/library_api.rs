//! The library API (`kmm::api`) end to end against a hub given on the command line:
//!
//! ```sh
//! cargo run --example library_api -- --endpoint http://127.0.0.1:8080 --models-dir /tmp/models
//! ```
//!
//! Lists an owner's models, looks at a repo's files, computes where it would be installed,
//! installs it with `download_snapshot`, and reads the registry back. `examples/demo.sh` runs
//! it against the fake hub (and so does CI).

use std::path::PathBuf;

use kmm::api;
use kmm::hub::{HubClient, HubConfig};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut endpoint = None;
    let mut models_dir = None;
    let mut model = "TheBloke/TinyLlama-1.1B-Chat-v1.0-GGUF".to_string();
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--endpoint" => endpoint = args.next(),
            "--models-dir" => models_dir = args.next().map(PathBuf::from),
            "--model" => model = args.next().ok_or("--model needs a value")?,
            other => return Err(format!("unknown argument `{other}`").into()),
        }
    }
    let endpoint = endpoint.ok_or("--endpoint URL is required")?;
    let models_dir = models_dir.ok_or("--models-dir DIR is required")?;
    let hub = HubClient::new(HubConfig::new(endpoint))?;

    let (owner, name) = api::parse_owner_repo(&model)?;
    let owner = owner.ok_or("pass an owner/name model id")?;
    let listed = api::list_models_for_owner(&hub, &owner, &api::ListOptions::new(10)).await?;
    println!("{owner} has {} models:", listed.len());
    for summary in &listed {
        println!("  {} (downloads {:?})", summary.id, summary.downloads);
    }

    let repo = api::get_model_files(&hub, &model, None).await?;
    println!("{name} @ {}: {} files", &repo.commit[..7], repo.files.len());
    let gguf = api::is_gguf_repo(&repo.files);
    let dest = api::resolve_install_root(&models_dir, &model, None, &repo.files);
    println!("gguf: {gguf}; would install into {}", dest.display());

    let options = api::DownloadOptions {
        include: if gguf {
            vec!["*Q2_K*".into(), "*.json".into()]
        } else {
            vec![]
        },
        resume: true,
        max_workers: Some(4),
        ..Default::default()
    };
    let installed = api::download_snapshot(&hub, &models_dir, &model, &options).await?;
    // The routing of what was selected (here: still GGUF, so still llama-cpp/).
    if installed.install_dir != dest {
        return Err(format!(
            "installed into {}, expected {}",
            installed.install_dir.display(),
            dest.display()
        )
        .into());
    }
    println!(
        "installed {} into {} ({} files downloaded)",
        installed.id,
        installed.install_dir.display(),
        installed.report.files_downloaded
    );
    if let Some(mirror) = api::copy_shared_configs(&models_dir, &installed.install_dir, &model)? {
        println!("config mirrored to {}", mirror.display());
    }
    let registry = api::load_registry(&models_dir)?;
    let record = registry
        .models
        .get(&model)
        .ok_or("the install is not registered")?;
    println!(
        "registry: {} at commit {} with {} files, {} bytes",
        record.model_id,
        record.commit.as_deref().unwrap_or("?"),
        record.files.len(),
        record.total_size
    );
    Ok(())
}
