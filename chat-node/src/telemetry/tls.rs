//! TLS to the OTLP endpoint, from the standard variables: an `https://` endpoint is verified
//! against the system's CA certificates, or only against the CA file
//! `OTEL_EXPORTER_OTLP_[<SIGNAL>_]CERTIFICATE` names; `OTEL_EXPORTER_OTLP_[<SIGNAL>_]CLIENT_CERTIFICATE`
//! and `_CLIENT_KEY` add a client certificate (mTLS). The signal-specific variable (`TRACES_`,
//! `LOGS_`) wins over the general one, as for the endpoint. Every file is read and checked at start, whatever the
//! scheme, so a wrong path or a file that is no PEM certificate stops chat-node with the
//! variable and path in the message; a plaintext `http://` endpoint ignores them afterwards.
//! rustls with ring, as the rest of the workspace; gRPC through tonic's own TLS, OTLP/HTTP
//! through hyper-rustls, both with the same trust anchors and client certificate.

use std::path::PathBuf;
use std::sync::Arc;

use opentelemetry_otlp::tonic_types::transport::{ClientTlsConfig, Identity};
use rustls::RootCertStore;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

use super::{Signal, TelemetryError, Var, lookup};

fn certificate(signal: Signal) -> Var {
    signal.var(
        "OTEL_EXPORTER_OTLP_TRACES_CERTIFICATE",
        "OTEL_EXPORTER_OTLP_LOGS_CERTIFICATE",
        "OTEL_EXPORTER_OTLP_CERTIFICATE",
    )
}
fn client_certificate(signal: Signal) -> Var {
    signal.var(
        "OTEL_EXPORTER_OTLP_TRACES_CLIENT_CERTIFICATE",
        "OTEL_EXPORTER_OTLP_LOGS_CLIENT_CERTIFICATE",
        "OTEL_EXPORTER_OTLP_CLIENT_CERTIFICATE",
    )
}
fn client_key(signal: Signal) -> Var {
    signal.var(
        "OTEL_EXPORTER_OTLP_TRACES_CLIENT_KEY",
        "OTEL_EXPORTER_OTLP_LOGS_CLIENT_KEY",
        "OTEL_EXPORTER_OTLP_CLIENT_KEY",
    )
}
fn endpoint(signal: Signal) -> Var {
    signal.var(
        "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
        "OTEL_EXPORTER_OTLP_LOGS_ENDPOINT",
        "OTEL_EXPORTER_OTLP_ENDPOINT",
    )
}
fn insecure(signal: Signal) -> Var {
    signal.var(
        "OTEL_EXPORTER_OTLP_TRACES_INSECURE",
        "OTEL_EXPORTER_OTLP_LOGS_INSECURE",
        "OTEL_EXPORTER_OTLP_INSECURE",
    )
}

/// Whether the signal's endpoint is TLS: `https://`, or (gRPC) no scheme at all unless
/// `OTEL_EXPORTER_OTLP_[<SIGNAL>_]INSECURE=true` — the rule opentelemetry-otlp applies itself.
pub(super) fn https_endpoint(
    env: &impl Fn(&str) -> Option<String>,
    signal: Signal,
    grpc: bool,
) -> bool {
    let Some((_, endpoint)) = lookup(env, endpoint(signal)) else {
        return false;
    };
    let lower = endpoint.to_ascii_lowercase();
    if lower.starts_with("https://") {
        return true;
    }
    if lower.contains("://") || !grpc {
        return false;
    }
    !lookup(env, insecure(signal)).is_some_and(|(_, v)| v.eq_ignore_ascii_case("true"))
}

/// A file named by a variable, read.
struct File {
    var: &'static str,
    path: PathBuf,
    pem: Vec<u8>,
}

impl File {
    fn read(
        env: &impl Fn(&str) -> Option<String>,
        var: Var,
    ) -> Result<Option<File>, TelemetryError> {
        let Some((var, path)) = lookup(env, var) else {
            return Ok(None);
        };
        let path = PathBuf::from(path);
        match std::fs::read(&path) {
            Ok(pem) => Ok(Some(File { var, path, pem })),
            Err(error) => Err(TelemetryError::TlsFile { var, path, error }),
        }
    }

    fn bad(&self, reason: impl Into<String>) -> TelemetryError {
        TelemetryError::TlsPem {
            var: self.var,
            path: self.path.clone(),
            reason: reason.into(),
        }
    }

    fn certificates(&self) -> Result<Vec<CertificateDer<'static>>, TelemetryError> {
        let certs = CertificateDer::pem_slice_iter(&self.pem)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| self.bad(format!("is not valid PEM: {e}")))?;
        if certs.is_empty() {
            return Err(self.bad("holds no PEM certificate"));
        }
        Ok(certs)
    }

    fn private_key(&self) -> Result<PrivateKeyDer<'static>, TelemetryError> {
        PrivateKeyDer::from_pem_slice(&self.pem).map_err(|e| match e {
            rustls::pki_types::pem::Error::NoItemsFound => self.bad("holds no PEM private key"),
            e => self.bad(format!("is not a valid PEM private key: {e}")),
        })
    }
}

/// The client certificate and its key, as PEM for tonic and parsed for rustls.
struct Client {
    cert_pem: Vec<u8>,
    key_pem: Vec<u8>,
    chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
}

/// TLS settings for an `https://` OTLP endpoint.
pub(super) struct ExportTls {
    roots: RootCertStore,
    client: Option<Client>,
}

impl ExportTls {
    /// Reads and checks the certificate files the variables name; `None` unless `https`.
    /// Without a CA file the system's CA certificates are trusted (only loaded for `https`).
    pub(super) fn load(
        env: &impl Fn(&str) -> Option<String>,
        signal: Signal,
        https: bool,
    ) -> Result<Option<ExportTls>, TelemetryError> {
        let ca = File::read(env, certificate(signal))?;
        let mut roots = RootCertStore::empty();
        if let Some(ca) = &ca {
            for cert in ca.certificates()? {
                roots
                    .add(cert)
                    .map_err(|e| ca.bad(format!("holds a certificate that cannot be a CA: {e}")))?;
            }
        }
        let client = match (
            File::read(env, client_certificate(signal))?,
            File::read(env, client_key(signal))?,
        ) {
            (None, None) => None,
            (Some(cert), Some(key)) => Some(Client {
                chain: cert.certificates()?,
                key: key.private_key()?,
                cert_pem: cert.pem,
                key_pem: key.pem,
            }),
            (Some(cert), None) => {
                return Err(TelemetryError::TlsPair {
                    set: cert.var,
                    missing: client_key(signal).1,
                });
            }
            (None, Some(key)) => {
                return Err(TelemetryError::TlsPair {
                    set: key.var,
                    missing: client_certificate(signal).1,
                });
            }
        };
        if !https {
            return Ok(None);
        }
        if ca.is_none() {
            let found = rustls_native_certs::load_native_certs();
            let (added, _) = roots.add_parsable_certificates(found.certs);
            if added == 0 {
                let why = found
                    .errors
                    .first()
                    .map_or_else(|| "none found".to_owned(), ToString::to_string);
                return Err(TelemetryError::Tls(format!(
                    "the OTLP endpoint is https but no system CA certificate could be loaded \
                     ({why}); set {} to a CA file",
                    certificate(signal).1
                )));
            }
        }
        let tls = ExportTls { roots, client };
        // Fail now on what rustls refuses (a key that does not match its certificate, …).
        tls.rustls()?;
        Ok(Some(tls))
    }

    /// For the OTLP/HTTP client (hyper-rustls).
    pub(super) fn rustls(&self) -> Result<rustls::ClientConfig, TelemetryError> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let builder = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| TelemetryError::Tls(e.to_string()))?
            .with_root_certificates(self.roots.clone());
        match &self.client {
            None => Ok(builder.with_no_client_auth()),
            Some(client) => builder
                .with_client_auth_cert(client.chain.clone(), client.key.clone_key())
                .map_err(|e| {
                    TelemetryError::Tls(format!(
                        "the client certificate and key cannot be used together: {e}"
                    ))
                }),
        }
    }

    /// For the gRPC channel (tonic).
    pub(super) fn tonic(&self) -> ClientTlsConfig {
        let config = ClientTlsConfig::new().trust_anchors(self.roots.roots.iter().cloned());
        match &self.client {
            Some(client) => config.identity(Identity::from_pem(&client.cert_pem, &client.key_pem)),
            None => config,
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;

    fn env(vars: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
        let map: HashMap<String, String> = vars
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        move |name| map.get(name).cloned()
    }

    #[test]
    fn which_endpoints_are_tls() {
        let https = |vars: &[(&str, &str)], grpc| https_endpoint(&env(vars), Signal::Traces, grpc);
        assert!(https(
            &[("OTEL_EXPORTER_OTLP_ENDPOINT", "https://c:4317")],
            true
        ));
        assert!(https(
            &[("OTEL_EXPORTER_OTLP_ENDPOINT", "HTTPS://c:4318")],
            false
        ));
        assert!(!https(
            &[("OTEL_EXPORTER_OTLP_ENDPOINT", "http://c:4317")],
            true
        ));
        assert!(!https(&[], true));
        // The traces-specific variable wins.
        assert!(!https(
            &[
                ("OTEL_EXPORTER_OTLP_ENDPOINT", "https://c:4317"),
                ("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "http://c:4317"),
            ],
            true
        ));
        // gRPC without a scheme is TLS unless INSECURE says otherwise.
        assert!(https(&[("OTEL_EXPORTER_OTLP_ENDPOINT", "c:4317")], true));
        assert!(!https(
            &[
                ("OTEL_EXPORTER_OTLP_ENDPOINT", "c:4317"),
                ("OTEL_EXPORTER_OTLP_INSECURE", "true"),
            ],
            true
        ));
    }

    fn err(vars: &[(&str, &str)]) -> String {
        match ExportTls::load(&env(vars), Signal::Traces, true) {
            Ok(_) => panic!("{vars:?} accepted"),
            Err(e) => e.to_string(),
        }
    }

    #[test]
    fn each_signal_reads_its_own_variables_before_the_general_ones() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("missing.pem");
        let missing = missing.to_str().unwrap();
        // A traces-only CA file is no business of the logs exporter, and the other way round.
        let traces_vars = [("OTEL_EXPORTER_OTLP_TRACES_CERTIFICATE", missing)];
        let traces_only = env(&traces_vars);
        assert!(ExportTls::load(&traces_only, Signal::Logs, false).is_ok());
        let logs_vars = [("OTEL_EXPORTER_OTLP_LOGS_CERTIFICATE", missing)];
        let logs_only = env(&logs_vars);
        assert!(ExportTls::load(&logs_only, Signal::Traces, false).is_ok());
        let message = ExportTls::load(&logs_only, Signal::Logs, false)
            .err()
            .expect("the logs CA file is read")
            .to_string();
        assert!(
            message.contains("OTEL_EXPORTER_OTLP_LOGS_CERTIFICATE") && message.contains(missing),
            "{message}"
        );
        let endpoints = env(&[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://collector:4317"),
            ("OTEL_EXPORTER_OTLP_LOGS_ENDPOINT", "https://logs:4317"),
        ]);
        assert!(https_endpoint(&endpoints, Signal::Logs, true));
        assert!(!https_endpoint(&endpoints, Signal::Traces, true));
    }

    #[test]
    fn file_errors_name_the_variable_and_the_path() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("missing.pem");
        let missing = missing.to_str().unwrap();
        let message = err(&[("OTEL_EXPORTER_OTLP_CERTIFICATE", missing)]);
        assert!(
            message.contains("OTEL_EXPORTER_OTLP_CERTIFICATE") && message.contains(missing),
            "{message}"
        );
        let message = err(&[("OTEL_EXPORTER_OTLP_TRACES_CERTIFICATE", missing)]);
        assert!(
            message.contains("OTEL_EXPORTER_OTLP_TRACES_CERTIFICATE"),
            "{message}"
        );

        let junk = dir.path().join("junk.pem");
        std::fs::write(&junk, "not a certificate").unwrap();
        let junk = junk.to_str().unwrap();
        let message = err(&[("OTEL_EXPORTER_OTLP_CERTIFICATE", junk)]);
        assert!(
            message.contains("holds no PEM certificate") && message.contains(junk),
            "{message}"
        );
        // Checked even for a plaintext endpoint: a typo is found at start, not in production.
        assert!(
            ExportTls::load(
                &env(&[("OTEL_EXPORTER_OTLP_CERTIFICATE", junk)]),
                Signal::Traces,
                false
            )
            .is_err()
        );

        let message = err(&[("OTEL_EXPORTER_OTLP_CLIENT_CERTIFICATE", junk)]);
        assert!(
            message.contains("OTEL_EXPORTER_OTLP_CLIENT_KEY"),
            "{message}"
        );
        let message = err(&[
            ("OTEL_EXPORTER_OTLP_CLIENT_CERTIFICATE", junk),
            ("OTEL_EXPORTER_OTLP_CLIENT_KEY", junk),
        ]);
        assert!(
            message.contains("OTEL_EXPORTER_OTLP_CLIENT_CERTIFICATE"),
            "{message}"
        );
    }

    #[test]
    fn a_ca_file_is_the_only_trust_anchor() {
        let ca = test_harness::redis::tls::TestCa::generate().unwrap();
        let dir = tempfile::tempdir().unwrap();
        let files = ca.write(dir.path()).unwrap();
        let vars = [
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "https://127.0.0.1:4317"),
            ("OTEL_EXPORTER_OTLP_CERTIFICATE", files.ca.to_str().unwrap()),
            (
                "OTEL_EXPORTER_OTLP_CLIENT_CERTIFICATE",
                files.cert.to_str().unwrap(),
            ),
            ("OTEL_EXPORTER_OTLP_CLIENT_KEY", files.key.to_str().unwrap()),
        ];
        let tls = ExportTls::load(&env(&vars), Signal::Traces, true)
            .unwrap()
            .expect("https");
        assert_eq!(tls.roots.len(), 1);
        assert!(tls.client.is_some());
        assert!(
            ExportTls::load(&env(&vars), Signal::Traces, false)
                .unwrap()
                .is_none()
        );

        // A key that is not the certificate's.
        let other = test_harness::redis::tls::TestCa::generate().unwrap();
        let other_key = dir.path().join("other.key");
        std::fs::write(&other_key, other.server_key_pem).unwrap();
        let message = err(&[
            ("OTEL_EXPORTER_OTLP_CERTIFICATE", files.ca.to_str().unwrap()),
            (
                "OTEL_EXPORTER_OTLP_CLIENT_CERTIFICATE",
                files.cert.to_str().unwrap(),
            ),
            ("OTEL_EXPORTER_OTLP_CLIENT_KEY", other_key.to_str().unwrap()),
        ]);
        assert!(message.contains("cannot be used together"), "{message}");
    }
}
