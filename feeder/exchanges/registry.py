"""The exchanges the feeder speaks: one descriptor and one settings class per exchange module.

Adding an exchange: write its module (protocol, ``Settings``, ``DESCRIPTOR``; see `feeder.exchanges.base`),
add its fixtures under tests/data/frames/, and add it to the two lines below.
Declare checked fields with the typed aliases (`SymbolList`, `WebSocketUrl`, ``client.settings``'s
`PositiveSeconds`...): a ``field_validator`` method would clash with another exchange's of the same name.
"""

from __future__ import annotations

from feeder.exchanges import binance, bithumb, bybit, coinone, okx, upbit
from feeder.exchanges.base import ExchangeDescriptor


class ExchangeSettings(
    upbit.Settings, binance.Settings, bithumb.Settings, coinone.Settings, bybit.Settings, okx.Settings
):
    """Every exchange's own settings, as one base of `feeder.settings.FeederSettings`."""


EXCHANGES: dict[str, ExchangeDescriptor] = {
    d.name: d
    for d in (
        upbit.DESCRIPTOR,
        binance.DESCRIPTOR,
        bithumb.DESCRIPTOR,
        coinone.DESCRIPTOR,
        bybit.DESCRIPTOR,
        okx.DESCRIPTOR,
    )
}
