//! Private CAs for the API server's client certificates: towards kubelets (the kubelet trusts
//! the CA, `authentication.x509.clientCAFile`, and the API server presents a certificate signed
//! by it for `kubectl logs`, `exec` and `port-forward`) and towards aggregated API servers (the
//! front-proxy CA: `--requestheader-client-ca-file` and `--proxy-client-cert-file`).

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose,
};

use crate::Error;

fn rcgen_err(what: &str) -> impl FnOnce(rcgen::Error) -> Error + '_ {
    move |e| Error::Other(format!("{what}: {e}"))
}

/// The CA (its certificate and signing key).
pub(crate) struct Ca {
    cert_pem: String,
    issuer: Issuer<'static, KeyPair>,
}

impl Ca {
    /// A new CA named `common_name`.
    pub(crate) fn generate(common_name: &str) -> Result<Self, Error> {
        let key = KeyPair::generate().map_err(rcgen_err("generate a CA key"))?;
        let mut params = CertificateParams::default();
        let mut name = DistinguishedName::new();
        name.push(DnType::CommonName, common_name);
        params.distinguished_name = name;
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let cert = params
            .self_signed(&key)
            .map_err(rcgen_err("sign a CA certificate"))?;
        Ok(Self {
            cert_pem: cert.pem(),
            issuer: Issuer::new(params, key),
        })
    }

    pub(crate) fn cert_pem(&self) -> String {
        self.cert_pem.clone()
    }

    /// A client certificate for `common_name` in `organization` (Kubernetes: user and group):
    /// (certificate PEM, private key PEM).
    pub(crate) fn client(
        &self,
        common_name: &str,
        organization: &str,
    ) -> Result<(String, String), Error> {
        let key = KeyPair::generate().map_err(rcgen_err("generate a client key"))?;
        let mut params = CertificateParams::default();
        let mut name = DistinguishedName::new();
        name.push(DnType::CommonName, common_name);
        name.push(DnType::OrganizationName, organization);
        params.distinguished_name = name;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        let cert = params
            .signed_by(&key, &self.issuer)
            .map_err(rcgen_err("sign a client certificate"))?;
        Ok((cert.pem(), key.serialize_pem()))
    }
}
