//! TLS of the kubelet endpoint: a serving certificate issued at start from the k3s server CA
//! (the CA the virtual API server trusts for kubelets, `--kubelet-certificate-authority`) for
//! the node addresses in use, and client certificates checked against the virtual client CA
//! after the handshake (so a certificate of another CA gets a 401, not a TLS alert).

use std::sync::Arc;

use rustls::client::danger::HandshakeSignatureValid;
use rustls::server::WebPkiClientVerifier;
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::{DigitallySignedStruct, DistinguishedName, RootCertStore, ServerConfig, SignatureScheme};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, UnixTime};

use super::KubeletError;

/// Reads a PEM file (errors name the file).
fn read(path: &std::path::Path) -> Result<String, KubeletError> {
    std::fs::read_to_string(path).map_err(|source| KubeletError::Read {
        path: path.to_owned(),
        source,
    })
}

fn der_len(n: usize) -> Vec<u8> {
    if n < 0x80 {
        // Fits in the short form.
        vec![u8::try_from(n).unwrap_or(0)]
    } else {
        let bytes: Vec<u8> = n.to_be_bytes().into_iter().skip_while(|b| *b == 0).collect();
        let mut out = vec![0x80 | u8::try_from(bytes.len()).unwrap_or(0)];
        out.extend(bytes);
        out
    }
}

fn der(tag: u8, content: &[u8]) -> Vec<u8> {
    let mut out = vec![tag];
    out.extend(der_len(content.len()));
    out.extend_from_slice(content);
    out
}

/// PKCS#8 around a SEC1 EC key (`algorithm` = the DER of the AlgorithmIdentifier content) or a
/// PKCS#1 RSA key: ring signs with PKCS#8 only, and k3s (like openssl) writes SEC1.
fn pkcs8(algorithm: &[u8], key: &[u8]) -> Vec<u8> {
    let mut body = vec![0x02, 0x01, 0x00];
    body.extend(der(0x30, algorithm));
    body.extend(der(0x04, key));
    der(0x30, &body)
}

const EC_P256: &[u8] = &[
    0x06, 0x07, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x02, 0x01, 0x06, 0x08, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x03,
    0x01, 0x07,
];
const EC_P384: &[u8] = &[
    0x06, 0x07, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x02, 0x01, 0x06, 0x05, 0x2b, 0x81, 0x04, 0x00, 0x22,
];
const RSA: &[u8] = &[
    0x06, 0x09, 0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x01, 0x05, 0x00,
];

/// A CA key in any PEM form k3s or openssl write (PKCS#8, SEC1 EC, PKCS#1 RSA).
pub fn key_pair(pem: &str) -> Option<rcgen::KeyPair> {
    let key = PrivateKeyDer::from_pem_slice(pem.as_bytes()).ok()?;
    let candidates: Vec<Vec<u8>> = match &key {
        PrivateKeyDer::Pkcs8(k) => vec![k.secret_pkcs8_der().to_vec()],
        PrivateKeyDer::Sec1(k) => vec![
            pkcs8(EC_P256, k.secret_sec1_der()),
            pkcs8(EC_P384, k.secret_sec1_der()),
        ],
        PrivateKeyDer::Pkcs1(k) => vec![pkcs8(RSA, k.secret_pkcs1_der())],
        _ => vec![],
    };
    candidates
        .into_iter()
        .find_map(|der| rcgen::KeyPair::try_from(&PrivatePkcs8KeyDer::from(der)).ok())
}

/// The serving certificate and key, signed by the CA, valid for `sans` (IPs and DNS names).
pub fn serving_cert(
    ca_cert: &std::path::Path,
    ca_key: &std::path::Path,
    sans: &[String],
) -> Result<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>), KubeletError> {
    let ca_key_pem = read(ca_key)?;
    let signing = key_pair(&ca_key_pem).ok_or_else(|| KubeletError::Key {
        path: ca_key.to_owned(),
    })?;
    let issuer = rcgen::Issuer::from_ca_cert_pem(&read(ca_cert)?, signing).map_err(|source| {
        KubeletError::Certificate {
            what: "reading the server CA certificate",
            source,
        }
    })?;
    let mut params =
        rcgen::CertificateParams::new(sans.to_vec()).map_err(|source| KubeletError::Certificate {
            what: "the kubelet serving certificate's names",
            source,
        })?;
    params.distinguished_name = rcgen::DistinguishedName::new();
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "vnest-kubelet");
    params.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ServerAuth];
    params.key_usages = vec![
        rcgen::KeyUsagePurpose::DigitalSignature,
        rcgen::KeyUsagePurpose::KeyEncipherment,
    ];
    let key = rcgen::KeyPair::generate().map_err(|source| KubeletError::Certificate {
        what: "generating the serving key",
        source,
    })?;
    let cert = params
        .signed_by(&key, &issuer)
        .map_err(|source| KubeletError::Certificate {
            what: "signing the serving certificate",
            source,
        })?;
    let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der()));
    Ok((vec![cert.der().clone()], key))
}

/// Checks client certificates against the client CA. In the handshake it only checks that the
/// client holds the key of the certificate it sent ([`ClientCa::verify`] decides later).
#[derive(Debug)]
pub struct ClientCa {
    inner: Arc<dyn ClientCertVerifier>,
}

impl ClientCa {
    pub fn load(path: &std::path::Path) -> Result<Arc<Self>, KubeletError> {
        let pem = read(path)?;
        let mut roots = RootCertStore::empty();
        for cert in CertificateDer::pem_slice_iter(pem.as_bytes()) {
            let cert = cert.map_err(|_| KubeletError::Key {
                path: path.to_owned(),
            })?;
            roots.add(cert).map_err(|source| KubeletError::Tls {
                what: "adding the client CA",
                source,
            })?;
        }
        let inner = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider())
            .allow_unauthenticated()
            .build()
            .map_err(|e| KubeletError::Verifier(e.to_string()))?;
        Ok(Arc::new(Self { inner }))
    }

    /// Whether a presented chain (leaf first) chains to the client CA now.
    pub fn verify(&self, chain: &[CertificateDer<'_>]) -> bool {
        let Some((leaf, intermediates)) = chain.split_first() else {
            return false;
        };
        self.inner
            .verify_client_cert(leaf, intermediates, UnixTime::now())
            .is_ok()
    }
}

impl ClientCertVerifier for ClientCa {
    fn offer_client_auth(&self) -> bool {
        true
    }
    fn client_auth_mandatory(&self) -> bool {
        false
    }
    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        self.inner.root_hint_subjects()
    }
    fn verify_client_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        Ok(ClientCertVerified::assertion())
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

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// The server config: HTTP/1.1 only (upgrades), our client-certificate check.
pub fn server_config(
    chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
    client_ca: Arc<ClientCa>,
) -> Result<Arc<ServerConfig>, KubeletError> {
    let mut config = ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|source| KubeletError::Tls {
            what: "protocol versions",
            source,
        })?
        .with_client_cert_verifier(client_ca)
        .with_single_cert(chain, key)
        .map_err(|source| KubeletError::Tls {
            what: "the serving certificate",
            source,
        })?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

#[cfg(test)]
#[allow(clippy::unwrap_used, reason = "a panicking unwrap is a test failure")]
mod tests {
    use super::*;

    #[test]
    fn der_lengths() {
        assert_eq!(der_len(5), vec![5]);
        assert_eq!(der_len(0x7f), vec![0x7f]);
        assert_eq!(der_len(0x80), vec![0x81, 0x80]);
        assert_eq!(der_len(0x1234), vec![0x82, 0x12, 0x34]);
    }

    #[test]
    fn a_pkcs8_key_round_trips() {
        let key = rcgen::KeyPair::generate().unwrap();
        let back = key_pair(&key.serialize_pem()).unwrap();
        assert_eq!(back.public_key_pem(), key.public_key_pem());
        assert!(key_pair("not a key").is_none());
    }

    /// A throwaway SEC1 key as `openssl ecparam -genkey -noout` (and k3s) write them.
    const SEC1_P256: &str = "-----BEGIN EC PRIVATE KEY-----
MHcCAQEEIIUrKZDgy9doQcgBc1lDeRbtk/55yDtPXYsgVERD9YU/oAoGCCqGSM49
AwEHoUQDQgAEDULMotoZWknv+tPtzE4X5ufj31b4CZM7EHjsu/przWj9R7ltb0CT
LtsLFlHzwpAY0EUnzSVCBL2AlCJ6E6+6uA==
-----END EC PRIVATE KEY-----
";

    #[test]
    fn a_sec1_key_signs_a_serving_certificate() {
        let dir = std::env::temp_dir().join(format!("vnest-kubelet-tls-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let ca_key = key_pair(SEC1_P256).unwrap();
        let mut ca = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        ca.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        ca.distinguished_name.push(rcgen::DnType::CommonName, "test-ca");
        let ca_cert = ca.self_signed(&ca_key).unwrap();
        std::fs::write(dir.join("ca.crt"), ca_cert.pem()).unwrap();
        std::fs::write(dir.join("ca.key"), SEC1_P256).unwrap();
        let names = ["127.0.0.1".to_owned(), "localhost".to_owned()];
        let (chain, _key) = serving_cert(&dir.join("ca.crt"), &dir.join("ca.key"), &names).unwrap();
        let (_, leaf) = x509_parser::parse_x509_certificate(&chain[0]).unwrap();
        assert_eq!(leaf.issuer().to_string(), "CN=test-ca");
        let sans = leaf
            .subject_alternative_name()
            .unwrap()
            .unwrap()
            .value
            .general_names
            .len();
        assert_eq!(sans, 2);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
