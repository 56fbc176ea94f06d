//! Building a kube-rs client from a kubeconfig, as kubectl resolves it.

use std::path::Path;

use kube::config::{KubeConfigOptions, Kubeconfig};

use crate::error::KubeError;

/// A client and the namespace it acts in.
#[derive(Clone)]
pub struct Cluster {
    pub client: kube::Client,
    pub namespace: String,
}

/// rustls on ring, the one provider the workspace builds; kube-rs asks rustls for the process default.
pub fn install_crypto_provider() {
    // Err means a provider is installed already, which is all we need.
    let _ = rustls::crypto::ring::default_provider().install_default();
}

/// Reads `path` and connects with `context` (the kubeconfig's current context when None); the namespace is
/// `namespace`, else the context's, else `default`, as kubectl decides.
pub async fn from_kubeconfig(
    path: &Path,
    context: Option<&str>,
    namespace: Option<&str>,
) -> Result<Cluster, KubeError> {
    install_crypto_provider();
    let where_ = path.display().to_string();
    let kc =
        Kubeconfig::read_from(path).map_err(|e| KubeError::Config(format!("{where_}: {e}")))?;
    let options = KubeConfigOptions {
        context: context.map(str::to_string),
        ..Default::default()
    };
    let config = kube::Config::from_custom_kubeconfig(kc, &options)
        .await
        .map_err(|e| KubeError::Config(format!("{where_}: {e}")))?;
    let namespace = namespace
        .map(str::to_string)
        .unwrap_or_else(|| config.default_namespace.clone());
    let client = kube::Client::try_from(config)
        .map_err(|e| KubeError::Config(format!("{where_}: cannot build a client: {e}")))?;
    Ok(Cluster { client, namespace })
}
