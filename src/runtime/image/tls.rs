//! TLS for one registry: the system roots, plus the registry's own certificates from its
//! certs directory ([`super::hosts`]), with those certificates also *pinned*.
//!
//! Why pinning: Docker's "use self-signed certificates" recipe (`openssl req -x509 ...`) makes
//! a certificate with `basicConstraints CA:TRUE` and serves it as the registry's own. Docker
//! (Go's crypto/x509) and containerd accept that once it is in `certs.d`, but rustls' webpki
//! refuses a CA certificate as an end entity (`CaUsedAsEndEntity`), whatever the roots. So the
//! verifier accepts a presented end-entity certificate that is byte-for-byte one of the
//! registry's `*.crt` certificates, after checking that it names the server and is within its
//! validity period; the handshake signature is still checked against its key by rustls (the
//! server proves it holds the private key). Every other certificate gets the full chain
//! verification of the platform verifier, with the registry's `*.crt` as extra roots: pinning
//! widens nothing beyond the exact certificates the operator placed for that registry.
//!
//! The alternative, a trust store that treats the pinned CA as an anchor and accepts it as
//! an end entity generally, would need a patched webpki; comparing bytes is the narrowest rule
//! that accepts what Docker accepts here.

use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{CertificateError, DigitallySignedStruct, SignatureScheme};

use super::hosts::RegistryTls;

/// Accepts the pinned certificates (name and validity checked), verifies all others fully.
#[derive(Debug)]
pub struct PinnedVerifier {
    pinned: Vec<CertificateDer<'static>>,
    inner: Arc<dyn ServerCertVerifier>,
}

impl PinnedVerifier {
    pub fn new(pinned: Vec<CertificateDer<'static>>, inner: Arc<dyn ServerCertVerifier>) -> Self {
        PinnedVerifier { pinned, inner }
    }
}

impl ServerCertVerifier for PinnedVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        if self
            .pinned
            .iter()
            .any(|p| p.as_ref() == end_entity.as_ref())
        {
            check_pinned(end_entity, server_name, now)?;
            return Ok(ServerCertVerified::assertion());
        }
        self.inner
            .verify_server_cert(end_entity, intermediates, server_name, ocsp_response, now)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
}

/// What a pinned certificate must still satisfy: it names `server_name` (subjectAltName, as
/// webpki matches it) and `now` is within its validity period.
pub fn check_pinned(
    cert: &CertificateDer<'_>,
    server_name: &ServerName<'_>,
    now: UnixTime,
) -> Result<(), rustls::Error> {
    let ee = webpki::EndEntityCert::try_from(cert)
        .map_err(|_| rustls::Error::InvalidCertificate(CertificateError::BadEncoding))?;
    ee.verify_is_valid_for_subject_name(server_name)
        .map_err(|_| rustls::Error::InvalidCertificate(CertificateError::NotValidForName))?;
    let (_, parsed) = x509_parser::parse_x509_certificate(cert.as_ref())
        .map_err(|_| rustls::Error::InvalidCertificate(CertificateError::BadEncoding))?;
    let validity = parsed.validity();
    let now = now.as_secs() as i64;
    if now < validity.not_before.timestamp() {
        return Err(rustls::Error::InvalidCertificate(
            CertificateError::NotValidYet,
        ));
    }
    if now > validity.not_after.timestamp() {
        return Err(rustls::Error::InvalidCertificate(CertificateError::Expired));
    }
    Ok(())
}

/// A registry client: `builder` as is when the registry has no certs directory, else with a
/// TLS configuration of its roots, pins and client certificate.
pub fn client(
    builder: reqwest::ClientBuilder,
    tls: Option<&RegistryTls>,
) -> Result<reqwest::Client, String> {
    let Some(tls) = tls else {
        return builder.build().map_err(|e| e.to_string());
    };
    let dir = tls.dir.display();
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let inner = rustls_platform_verifier::Verifier::new_with_extra_roots(
        tls.roots.clone(),
        provider.clone(),
    )
    .map_err(|e| format!("{dir}: the certificates cannot be used as roots: {e}"))?;
    let verifier = PinnedVerifier::new(tls.roots.clone(), Arc::new(inner));
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(verifier));
    let config = match &tls.client {
        Some((chain, key)) => config
            .with_client_auth_cert(chain.clone(), key.clone_key())
            .map_err(|e| format!("{dir}: the client certificate and key do not match: {e}"))?,
        None => config.with_no_client_auth(),
    };
    builder
        .tls_backend_preconfigured(config)
        .build()
        .map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cert(names: &[&str], ca: bool, years: (i32, i32)) -> CertificateDer<'static> {
        let mut p =
            rcgen::CertificateParams::new(names.iter().map(|s| s.to_string()).collect::<Vec<_>>())
                .unwrap();
        if ca {
            p.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        }
        p.not_before = rcgen::date_time_ymd(years.0, 1, 1);
        p.not_after = rcgen::date_time_ymd(years.1, 1, 1);
        let key = rcgen::KeyPair::generate().unwrap();
        p.self_signed(&key).unwrap().der().clone()
    }

    fn name(s: &str) -> ServerName<'static> {
        ServerName::try_from(s.to_string()).unwrap()
    }

    #[test]
    fn a_pinned_ca_certificate_is_accepted_for_its_names_while_valid() {
        let c = cert(&["127.0.0.1", "registry.local"], true, (2000, 2100));
        let now = UnixTime::now();
        check_pinned(&c, &name("127.0.0.1"), now).unwrap();
        check_pinned(&c, &name("registry.local"), now).unwrap();
        assert_eq!(
            check_pinned(&c, &name("other.local"), now).unwrap_err(),
            rustls::Error::InvalidCertificate(CertificateError::NotValidForName)
        );
        let expired = cert(&["registry.local"], true, (2000, 2001));
        assert_eq!(
            check_pinned(&expired, &name("registry.local"), now).unwrap_err(),
            rustls::Error::InvalidCertificate(CertificateError::Expired)
        );
        let future = cert(&["registry.local"], true, (2090, 2100));
        assert_eq!(
            check_pinned(&future, &name("registry.local"), now).unwrap_err(),
            rustls::Error::InvalidCertificate(CertificateError::NotValidYet)
        );
    }

    /// Records whether the inner verifier was asked, and refuses.
    #[derive(Debug, Default)]
    struct Refuse(std::sync::atomic::AtomicUsize);

    impl ServerCertVerifier for Refuse {
        fn verify_server_cert(
            &self,
            _: &CertificateDer<'_>,
            _: &[CertificateDer<'_>],
            _: &ServerName<'_>,
            _: &[u8],
            _: UnixTime,
        ) -> Result<ServerCertVerified, rustls::Error> {
            self.0.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            Err(rustls::Error::InvalidCertificate(
                CertificateError::UnknownIssuer,
            ))
        }
        fn verify_tls12_signature(
            &self,
            _: &[u8],
            _: &CertificateDer<'_>,
            _: &DigitallySignedStruct,
        ) -> Result<HandshakeSignatureValid, rustls::Error> {
            unreachable!()
        }
        fn verify_tls13_signature(
            &self,
            _: &[u8],
            _: &CertificateDer<'_>,
            _: &DigitallySignedStruct,
        ) -> Result<HandshakeSignatureValid, rustls::Error> {
            unreachable!()
        }
        fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
            Vec::new()
        }
    }

    #[test]
    fn only_the_exact_pinned_bytes_skip_the_full_verification() {
        let pinned = cert(&["registry.local"], true, (2000, 2100));
        let other = cert(&["registry.local"], true, (2000, 2100));
        let inner = Arc::new(Refuse::default());
        let v = PinnedVerifier::new(vec![pinned.clone()], inner.clone());
        let now = UnixTime::now();
        v.verify_server_cert(&pinned, &[], &name("registry.local"), &[], now)
            .expect("the pinned certificate");
        assert_eq!(inner.0.load(std::sync::atomic::Ordering::SeqCst), 0);
        assert!(v
            .verify_server_cert(&other, &[], &name("registry.local"), &[], now)
            .is_err());
        assert_eq!(inner.0.load(std::sync::atomic::Ordering::SeqCst), 1);
        // Pinned but for another name: refused without asking the inner verifier.
        assert!(v
            .verify_server_cert(&pinned, &[], &name("evil.local"), &[], now)
            .is_err());
        assert_eq!(inner.0.load(std::sync::atomic::Ordering::SeqCst), 1);
    }
}
