//! A private CA and a server certificate for `127.0.0.1` / `localhost`, made with rcgen, so a
//! test can run `redis-server` with TLS (see [`super::RedisOptions::tls`]) and give clients the
//! CA to trust.

use std::path::{Path, PathBuf};

use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair, KeyUsagePurpose};

use crate::Error;

/// PEM texts of a fresh CA and of a server certificate it signed.
#[derive(Clone, Debug)]
pub struct TestCa {
    pub ca_pem: String,
    pub server_cert_pem: String,
    pub server_key_pem: String,
}

fn rcgen_error(what: &str) -> impl Fn(rcgen::Error) -> Error + '_ {
    move |e| Error::Other(format!("generate {what}: {e}"))
}

impl TestCa {
    /// A new CA ("chatcluster test CA") and a server certificate for 127.0.0.1 and localhost.
    pub fn generate() -> Result<TestCa, Error> {
        let ca_key = KeyPair::generate().map_err(rcgen_error("the CA key"))?;
        let mut ca_params = CertificateParams::new(Vec::<String>::new())
            .map_err(rcgen_error("the CA parameters"))?;
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca_params
            .distinguished_name
            .push(DnType::CommonName, "chatcluster test CA");
        ca_params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let ca_cert = ca_params
            .self_signed(&ca_key)
            .map_err(rcgen_error("the CA certificate"))?;
        let issuer = Issuer::new(ca_params, ca_key);

        let server_key = KeyPair::generate().map_err(rcgen_error("the server key"))?;
        let mut server_params =
            CertificateParams::new(vec!["127.0.0.1".to_owned(), "localhost".to_owned()])
                .map_err(rcgen_error("the server parameters"))?;
        server_params
            .distinguished_name
            .push(DnType::CommonName, "redis-server");
        let server_cert = server_params
            .signed_by(&server_key, &issuer)
            .map_err(rcgen_error("the server certificate"))?;
        Ok(TestCa {
            ca_pem: ca_cert.pem(),
            server_cert_pem: server_cert.pem(),
            server_key_pem: server_key.serialize_pem(),
        })
    }

    /// Writes `ca.pem`, `server.pem` and `server.key` into `dir`; returns their paths.
    pub fn write(&self, dir: &Path) -> Result<TlsFiles, Error> {
        let files = TlsFiles {
            ca: dir.join("ca.pem"),
            cert: dir.join("server.pem"),
            key: dir.join("server.key"),
        };
        for (path, text) in [
            (&files.ca, &self.ca_pem),
            (&files.cert, &self.server_cert_pem),
            (&files.key, &self.server_key_pem),
        ] {
            std::fs::write(path, text).map_err(|source| Error::Io {
                context: format!("write {}", path.display()),
                source,
            })?;
        }
        Ok(files)
    }
}

/// Where [`TestCa::write`] put the files.
#[derive(Clone, Debug)]
pub struct TlsFiles {
    pub ca: PathBuf,
    pub cert: PathBuf,
    pub key: PathBuf,
}
