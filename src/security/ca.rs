//! The cluster CA (created at `shoal init`) and the per-node API server certificates it signs.

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose, SanType,
};

use super::SecurityError;

/// A PEM certificate and its PEM private key.
#[derive(Clone)]
pub struct CertPair {
    pub cert_pem: String,
    pub key_pem: String,
}

fn err(e: impl std::fmt::Display) -> SecurityError {
    SecurityError::Cert(e.to_string())
}

pub fn new_ca(cluster_id: &str) -> Result<CertPair, SecurityError> {
    let key = KeyPair::generate().map_err(err)?;
    let mut params = CertificateParams::new(Vec::<String>::new()).map_err(err)?;
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params
        .distinguished_name
        .push(DnType::CommonName, format!("shoal-ca-{cluster_id}"));
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    params.not_before = rcgen::date_time_ymd(2024, 1, 1);
    params.not_after = rcgen::date_time_ymd(2124, 1, 1);
    let cert = params.self_signed(&key).map_err(err)?;
    Ok(CertPair {
        cert_pem: cert.pem(),
        key_pem: key.serialize_pem(),
    })
}

/// A server certificate for a node's API, valid for its name, its addresses and localhost.
pub fn issue_server_cert(
    ca: &CertPair,
    node_name: &str,
    ips: &[std::net::IpAddr],
) -> Result<CertPair, SecurityError> {
    let ca_key = KeyPair::from_pem(&ca.key_pem).map_err(err)?;
    let issuer = Issuer::from_ca_cert_pem(&ca.cert_pem, ca_key).map_err(err)?;
    let key = KeyPair::generate().map_err(err)?;
    let mut params = CertificateParams::new(vec![node_name.to_string(), "localhost".to_string()])
        .map_err(err)?;
    params
        .distinguished_name
        .push(DnType::CommonName, format!("shoal-node-{node_name}"));
    let mut all_ips: Vec<std::net::IpAddr> = ips.to_vec();
    all_ips.push(std::net::IpAddr::from([127, 0, 0, 1]));
    all_ips.sort();
    all_ips.dedup();
    params
        .subject_alt_names
        .extend(all_ips.into_iter().map(SanType::IpAddress));
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    params.not_before = rcgen::date_time_ymd(2024, 1, 1);
    params.not_after = rcgen::date_time_ymd(2124, 1, 1);
    let cert = params.signed_by(&key, &issuer).map_err(err)?;
    Ok(CertPair {
        cert_pem: cert.pem(),
        key_pem: key.serialize_pem(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn issues_a_cert_signed_by_the_ca() {
        let ca = new_ca("0011223344556677").unwrap();
        let pair = issue_server_cert(&ca, "n1", &["10.0.0.1".parse().unwrap()]).unwrap();
        assert!(pair.cert_pem.starts_with("-----BEGIN CERTIFICATE-----"));
        assert!(issue_server_cert(
            &CertPair {
                cert_pem: "junk".into(),
                key_pem: ca.key_pem.clone()
            },
            "n1",
            &[]
        )
        .is_err());
    }
}
