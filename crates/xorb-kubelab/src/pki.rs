//! The lab's own keys and certificates: a CA, the API server's serving certificate (loopback names and the first
//! Service IP), and the service-account signing key pair 1.20's API server requires.

use std::net::IpAddr;

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};

use crate::LabError;

pub(crate) struct Pki {
    pub ca_pem: String,
    pub ca_der: Vec<u8>,
    pub serving_cert_pem: String,
    pub serving_key_pem: String,
    pub sa_key_pem: String,
    pub sa_pub_pem: String,
}

fn pki_err(what: &str, e: rcgen::Error) -> LabError {
    LabError::Pki(format!("{what}: {e}"))
}

/// `service_ip` is the first address of the Service range (the `kubernetes` Service gets it): in the SANs as a
/// real cluster has it, though nothing here ever binds it.
pub(crate) fn generate(service_ip: IpAddr) -> Result<Pki, LabError> {
    let ca_key = KeyPair::generate().map_err(|e| pki_err("CA key", e))?;
    let mut ca_params =
        CertificateParams::new(Vec::<String>::new()).map_err(|e| pki_err("CA", e))?;
    ca_params
        .distinguished_name
        .push(DnType::CommonName, "xorb-kubelab CA");
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    let ca_cert = ca_params
        .self_signed(&ca_key)
        .map_err(|e| pki_err("CA certificate", e))?;
    let issuer = Issuer::new(ca_params, ca_key);

    let serving_key = KeyPair::generate().map_err(|e| pki_err("serving key", e))?;
    let names: Vec<String> = [
        "127.0.0.1",
        "localhost",
        "kubernetes",
        "kubernetes.default",
        "kubernetes.default.svc",
        "kubernetes.default.svc.cluster.local",
    ]
    .iter()
    .map(|s| s.to_string())
    .chain(std::iter::once(service_ip.to_string()))
    .collect();
    let mut serving = CertificateParams::new(names).map_err(|e| pki_err("serving", e))?;
    serving
        .distinguished_name
        .push(DnType::CommonName, "kube-apiserver");
    serving.key_usages = vec![
        KeyUsagePurpose::DigitalSignature,
        KeyUsagePurpose::KeyEncipherment,
    ];
    serving.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    let serving_cert = serving
        .signed_by(&serving_key, &issuer)
        .map_err(|e| pki_err("serving certificate", e))?;

    let sa_key = KeyPair::generate().map_err(|e| pki_err("service-account key", e))?;

    Ok(Pki {
        ca_pem: ca_cert.pem(),
        ca_der: ca_cert.der().to_vec(),
        serving_cert_pem: serving_cert.pem(),
        serving_key_pem: serving_key.serialize_pem(),
        sa_key_pem: sa_key.serialize_pem(),
        sa_pub_pem: sa_key.public_key_pem(),
    })
}
