//! Throwaway certificate authorities for the TLS tests (rcgen): a CA, and leaf certificates it
//! signs for servers and clients.

/// A CA that exists only for one test.
pub struct TestCa {
    issuer: rcgen::CertifiedIssuer<'static, rcgen::KeyPair>,
}

impl TestCa {
    pub fn new(name: &str) -> TestCa {
        let mut p = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        p.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        p.distinguished_name
            .push(rcgen::DnType::CommonName, name.to_string());
        p.key_usages = vec![
            rcgen::KeyUsagePurpose::KeyCertSign,
            rcgen::KeyUsagePurpose::CrlSign,
            rcgen::KeyUsagePurpose::DigitalSignature,
        ];
        let key = rcgen::KeyPair::generate().unwrap();
        TestCa {
            issuer: rcgen::CertifiedIssuer::self_signed(p, key).unwrap(),
        }
    }

    pub fn pem(&self) -> String {
        self.issuer.pem()
    }

    /// (certificate PEM, PKCS#8 key PEM). Server certs are for `localhost` and 127.0.0.1.
    pub fn leaf(&self, serial: u64, server: bool) -> (String, String) {
        let sans: &[&str] = if server {
            &["localhost", "127.0.0.1"]
        } else {
            &["client.tracegate.test"]
        };
        self.leaf_for(serial, server, sans)
    }

    /// A leaf for the names (DNS names or IP addresses) `sans`.
    pub fn leaf_for(&self, serial: u64, server: bool, sans: &[&str]) -> (String, String) {
        let sans: Vec<String> = sans.iter().map(|s| s.to_string()).collect();
        let cn = if server {
            sans[0].clone()
        } else {
            "client".into()
        };
        let mut p = rcgen::CertificateParams::new(sans).unwrap();
        p.serial_number = Some(rcgen::SerialNumber::from(serial));
        p.distinguished_name.push(rcgen::DnType::CommonName, cn);
        p.extended_key_usages = vec![if server {
            rcgen::ExtendedKeyUsagePurpose::ServerAuth
        } else {
            rcgen::ExtendedKeyUsagePurpose::ClientAuth
        }];
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = p.signed_by(&key, &self.issuer).unwrap();
        (cert.pem(), key.serialize_pem())
    }

    /// Writes the CA and a server leaf for `sans` into `dir`: (ca.pem, cert.pem, key.pem).
    pub fn write_server_files(
        &self,
        dir: &std::path::Path,
        name: &str,
        sans: &[&str],
    ) -> (std::path::PathBuf, std::path::PathBuf, std::path::PathBuf) {
        let (cert, key) = self.leaf_for(1, true, sans);
        let paths = (
            dir.join(format!("{name}-ca.pem")),
            dir.join(format!("{name}-cert.pem")),
            dir.join(format!("{name}-key.pem")),
        );
        std::fs::write(&paths.0, self.pem()).unwrap();
        std::fs::write(&paths.1, cert).unwrap();
        std::fs::write(&paths.2, key).unwrap();
        paths
    }
}
