"""The cluster CA: ten years, P-256, a CA that can sign, saved and loaded as PEM."""

from __future__ import annotations

import datetime
import stat
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric import ec

from shoal.pki import ca


def test_a_new_ca_is_a_p256_ca_for_ten_years_and_round_trips(tmp_path: Path) -> None:
    made = ca.make_ca()
    assert isinstance(made.cert.public_key(), ec.EllipticCurvePublicKey)
    life = made.cert.not_valid_after_utc - made.cert.not_valid_before_utc
    assert abs(life - ca.CA_LIFETIME) < datetime.timedelta(seconds=5)
    made.save(tmp_path / "ca.crt", tmp_path / "ca.key")
    assert stat.S_IMODE((tmp_path / "ca.key").stat().st_mode) == 0o600
    loaded = ca.load_ca(tmp_path / "ca.crt", tmp_path / "ca.key")
    assert loaded.der == made.der
    assert loaded.signing_key().private_numbers() == made.signing_key().private_numbers()
    trust_only = ca.load_ca(tmp_path / "ca.crt")
    with pytest.raises(ValueError, match="certificates are signed on a manager"):
        trust_only.signing_key()


def test_bad_files_say_which_and_what(tmp_path: Path) -> None:
    (tmp_path / "junk.crt").write_text("not pem")
    with pytest.raises(ValueError, match=r"junk\.crt is not a PEM certificate"):
        ca.load_ca(tmp_path / "junk.crt")
    with pytest.raises(ValueError, match=r"cannot read .*missing\.crt"):
        ca.load_ca(tmp_path / "missing.crt")
