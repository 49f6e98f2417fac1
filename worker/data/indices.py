"""The catalogue of synthetic OpenSearch indices the Query DSL generator asks questions about.

Each index has 8 to 11 typed fields (keyword, text, date, numeric) with the vocabulary that
questions draw values from. Kept apart from the generator so the data reads as a table.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Final, Literal

__all__ = ["INDICES", "NUMERIC_TYPES", "FieldSpec", "FieldType", "IndexSpec"]

FieldType = Literal["keyword", "text", "date", "integer", "long", "float", "double"]
NUMERIC_TYPES: Final = frozenset({"integer", "long", "float", "double"})


@dataclass(frozen=True, slots=True)
class FieldSpec:
    """One field of an index, with what the generator needs to ask questions about it.

    `noun` is how questions name the field; `values` are the exact keyword values (or numeric
    codes, or text phrases) questions use; `low`/`high`/`unit` bound numeric thresholds;
    `verb` is the past participle date questions use ("created", "shipped"); `phrases` are
    field-specific wordings of a positive condition, with `{v}` for the value; `exists_ok`
    marks optional fields that questions may ask to be present or absent; `summable` marks
    quantities whose sum means something (amounts, weights), unlike ratings or levels.
    """

    name: str
    type: FieldType
    description: str
    noun: str
    values: tuple[str, ...] = ()
    low: float = 0
    high: float = 0
    unit: str = ""
    verb: str = ""
    phrases: tuple[str, ...] = ()
    exists_ok: bool = False
    summable: bool = False

    @property
    def is_code(self) -> bool:
        """A numeric field holding codes (HTTP status): filtered on, never averaged or sorted."""
        return self.type in NUMERIC_TYPES and bool(self.values)


@dataclass(frozen=True, slots=True)
class IndexSpec:
    """One OpenSearch index: its name, what a document is, and its typed fields."""

    name: str
    description: str
    singular: str
    plural: str
    fields: tuple[FieldSpec, ...]
    #: The date field "most recent"/"oldest" questions sort on.
    main_date: str = ""

    def by_type(self, *types: str) -> list[FieldSpec]:
        return [f for f in self.fields if f.type in types]


def _kw(
    name: str,
    description: str,
    noun: str,
    values: Sequence[str],
    *phrases: str,
    exists_ok: bool = False,
) -> FieldSpec:
    return FieldSpec(
        name, "keyword", description, noun, tuple(values), phrases=phrases, exists_ok=exists_ok
    )


def _txt(
    name: str, description: str, noun: str, values: Sequence[str], *, exists_ok: bool = False
) -> FieldSpec:
    return FieldSpec(name, "text", description, noun, tuple(values), exists_ok=exists_ok)


def _num(
    name: str,
    type_: FieldType,
    description: str,
    noun: str,
    low: float,
    high: float,
    unit: str = "",
    values: Sequence[str] = (),
    *,
    summable: bool = False,
) -> FieldSpec:
    return FieldSpec(
        name,
        type_,
        description,
        noun,
        tuple(values),
        low=low,
        high=high,
        unit=unit,
        summable=summable,
    )


def _date(
    name: str, description: str, noun: str, verb: str, *, exists_ok: bool = False
) -> FieldSpec:
    return FieldSpec(name, "date", description, noun, verb=verb, exists_ok=exists_ok)


def _id(name: str, description: str, noun: str) -> FieldSpec:
    # Identifiers are part of a realistic mapping, but questions never filter on them.
    return FieldSpec(name, "keyword", description, noun)


INDICES: Final[tuple[IndexSpec, ...]] = (
    IndexSpec(
        "sales_reports",
        "Point-of-sale transactions reported daily by every store and the online shop.",
        "sales transaction",
        "sales transactions",
        (
            _id("transaction_id", "unique identifier of the transaction", "transaction id"),
            _kw(
                "transaction_area",
                "sales area the store belongs to",
                "transaction area",
                ("north", "south", "east", "west", "central", "online"),
                "in the {v} transaction area",
                "from the {v} area",
            ),
            _kw(
                "store_location",
                "city of the store",
                "store location",
                ("Boston", "Chicago", "Denver", "Seattle", "Austin", "Miami"),
                "at the {v} store",
                "sold in {v}",
            ),
            _date("transaction_date", "when the sale happened", "transaction date", "made"),
            _kw(
                "product_category",
                "category of the product sold",
                "product category",
                ("electronics", "grocery", "apparel", "home", "toys", "sports"),
                "in the {v} category",
            ),
            _txt(
                "product_name",
                "free-text product name",
                "product name",
                (
                    "wireless headphones",
                    "running shoes",
                    "coffee maker",
                    "gaming laptop",
                    "winter jacket",
                    "yoga mat",
                ),
            ),
            _num(
                "quantity",
                "integer",
                "units sold in the transaction",
                "quantity",
                1,
                50,
                "units",
                summable=True,
            ),
            _num(
                "unit_price",
                "float",
                "price of one unit in US dollars",
                "unit price",
                1,
                2000,
                "dollars",
            ),
            _num(
                "total_amount",
                "float",
                "amount charged in US dollars",
                "total amount",
                5,
                20000,
                "dollars",
                summable=True,
            ),
            _kw(
                "payment_method",
                "how the customer paid",
                "payment method",
                ("credit_card", "debit_card", "cash", "gift_card", "mobile_wallet"),
                "paid with {v}",
                "paid by {v}",
            ),
            _kw(
                "customer_segment",
                "loyalty segment of the customer, if known",
                "customer segment",
                ("retail", "wholesale", "loyalty"),
                "from {v} customers",
                exists_ok=True,
            ),
        ),
        main_date="transaction_date",
    ),
    IndexSpec(
        "web_server_logs",
        "Access log entries from the public web servers and the API gateway.",
        "request",
        "requests",
        (
            _date("timestamp", "when the request was received", "timestamp", "logged"),
            _kw(
                "client_ip",
                "IP address of the client",
                "client IP",
                ("10.0.0.12", "10.0.3.7", "192.168.1.20", "172.16.4.33"),
                "from {v}",
            ),
            _kw(
                "http_method",
                "HTTP method of the request",
                "HTTP method",
                ("GET", "POST", "PUT", "DELETE", "PATCH"),
                "using {v}",
                "made with {v}",
            ),
            _kw(
                "url_path",
                "requested path",
                "URL path",
                ("/api/orders", "/login", "/checkout", "/api/users", "/static/app.js"),
                "to {v}",
                "hitting {v}",
            ),
            _num(
                "status_code",
                "integer",
                "HTTP status code of the response",
                "status code",
                100,
                599,
                values=("200", "301", "404", "429", "500", "503"),
            ),
            _num(
                "response_time_ms",
                "integer",
                "time to serve the request in milliseconds",
                "response time",
                1,
                10000,
                "ms",
            ),
            _num(
                "bytes_sent",
                "long",
                "size of the response body in bytes",
                "bytes sent",
                0,
                5000000,
                "bytes",
                summable=True,
            ),
            _txt(
                "user_agent",
                "user agent string of the client",
                "user agent",
                ("Firefox", "curl", "Googlebot", "Safari mobile", "python requests"),
            ),
            _kw(
                "host",
                "server that handled the request",
                "host",
                ("web-01", "web-02", "web-03", "api-gateway"),
                "served by {v}",
                "on {v}",
            ),
            _txt(
                "error_message",
                "error reported while serving the request, if any",
                "error message",
                ("connection timeout", "upstream unavailable", "permission denied", "null pointer"),
                exists_ok=True,
            ),
        ),
        main_date="timestamp",
    ),
    IndexSpec(
        "support_tickets",
        "Customer support tickets opened through the help desk.",
        "ticket",
        "tickets",
        (
            _id("ticket_id", "unique ticket identifier", "ticket id"),
            _date("created_at", "when the ticket was opened", "creation date", "created"),
            _date(
                "resolved_at",
                "when the ticket was resolved; absent while unresolved",
                "resolution date",
                "resolved",
                exists_ok=True,
            ),
            _kw(
                "priority",
                "ticket priority",
                "priority",
                ("low", "medium", "high", "urgent"),
                "with {v} priority",
                "marked {v}",
            ),
            _kw(
                "status",
                "workflow status",
                "status",
                ("open", "pending", "resolved", "closed"),
                "that are {v}",
                "in status {v}",
            ),
            _kw(
                "product",
                "product the ticket is about",
                "product",
                ("mobile app", "web portal", "billing", "api"),
                "about the {v}",
                "concerning the {v}",
            ),
            _txt(
                "subject",
                "short free-text summary written by the customer",
                "subject",
                (
                    "login failure",
                    "refund request",
                    "password reset",
                    "slow dashboard",
                    "missing invoice",
                ),
            ),
            _kw(
                "assigned_team",
                "team working on the ticket",
                "assigned team",
                ("tier1", "tier2", "billing_ops", "engineering"),
                "assigned to {v}",
                "handled by {v}",
            ),
            _num(
                "customer_rating",
                "integer",
                "satisfaction rating from 1 to 5",
                "customer rating",
                1,
                5,
            ),
            _num(
                "resolution_hours",
                "float",
                "hours from opening to resolution",
                "resolution time",
                1,
                240,
                "hours",
            ),
        ),
        main_date="created_at",
    ),
    IndexSpec(
        "shipments",
        "Freight shipments tracked from the origin warehouse to the destination.",
        "shipment",
        "shipments",
        (
            _id("shipment_id", "unique tracking number", "shipment id"),
            _kw(
                "origin_warehouse",
                "warehouse the shipment left from",
                "origin warehouse",
                ("Rotterdam", "Memphis", "Singapore", "Louisville", "Leipzig"),
                "leaving from {v}",
                "out of the {v} warehouse",
            ),
            _kw(
                "destination_country",
                "country of delivery",
                "destination country",
                ("Germany", "France", "Japan", "Brazil", "India", "United States"),
                "going to {v}",
                "bound for {v}",
            ),
            _kw(
                "carrier",
                "carrier transporting the shipment",
                "carrier",
                ("DHL", "FedEx", "UPS", "Maersk", "USPS"),
                "carried by {v}",
                "sent with {v}",
            ),
            _date("ship_date", "when the shipment left the warehouse", "ship date", "shipped"),
            _date(
                "delivery_date",
                "when the shipment was delivered; absent until delivery",
                "delivery date",
                "delivered",
                exists_ok=True,
            ),
            _num(
                "weight_kg",
                "float",
                "gross weight in kilograms",
                "weight",
                1,
                2000,
                "kg",
                summable=True,
            ),
            _num(
                "freight_cost",
                "float",
                "freight cost in US dollars",
                "freight cost",
                5,
                15000,
                "dollars",
                summable=True,
            ),
            _kw(
                "status",
                "current tracking status",
                "status",
                ("in_transit", "delivered", "delayed", "returned", "lost"),
                "with status {v}",
                "currently {v}",
            ),
            _txt(
                "contents_description",
                "free-text description of the goods",
                "contents description",
                (
                    "medical supplies",
                    "auto parts",
                    "fresh produce",
                    "consumer electronics",
                    "office furniture",
                ),
            ),
        ),
        main_date="ship_date",
    ),
    IndexSpec(
        "iot_sensor_readings",
        "Readings reported by sensors installed at the company's sites.",
        "reading",
        "readings",
        (
            _kw(
                "device_id",
                "identifier of the reporting device",
                "device",
                ("sensor-001", "sensor-017", "sensor-042", "sensor-108"),
                "from device {v}",
            ),
            _kw(
                "site",
                "site where the device is installed",
                "site",
                ("plant-a", "plant-b", "warehouse-3", "office-hq"),
                "at site {v}",
                "recorded at {v}",
            ),
            _kw(
                "sensor_type",
                "kind of measurement",
                "sensor type",
                ("temperature", "humidity", "pressure", "vibration"),
                "of type {v}",
                "from {v} sensors",
            ),
            _date("reading_time", "when the reading was taken", "reading time", "recorded"),
            _num(
                "value", "double", "measured value in the sensor's unit", "measured value", 0, 1000
            ),
            _num(
                "battery_level",
                "integer",
                "remaining battery in percent",
                "battery level",
                0,
                100,
                "percent",
            ),
            _kw(
                "firmware_version",
                "firmware running on the device",
                "firmware version",
                ("1.4.2", "2.0.0", "2.1.3"),
                "running firmware {v}",
            ),
            _txt(
                "alert_message",
                "alert raised with the reading, if any",
                "alert message",
                ("threshold exceeded", "sensor offline", "low battery", "calibration drift"),
                exists_ok=True,
            ),
        ),
        main_date="reading_time",
    ),
    IndexSpec(
        "hotel_bookings",
        "Room bookings across the hotel chain, one document per reservation.",
        "booking",
        "bookings",
        (
            _id("booking_id", "unique reservation number", "booking id"),
            _kw(
                "hotel_city",
                "city of the hotel",
                "hotel city",
                ("Lisbon", "Prague", "Vienna", "Madrid", "Dublin"),
                "in {v}",
                "for the {v} hotel",
            ),
            _kw(
                "room_type",
                "type of room booked",
                "room type",
                ("single", "double", "suite", "family"),
                "for a {v} room",
            ),
            _date("check_in_date", "arrival date", "check-in date", "arriving"),
            _date("booked_at", "when the reservation was made", "booking date", "booked"),
            _num(
                "nights",
                "integer",
                "length of stay in nights",
                "number of nights",
                1,
                21,
                "nights",
                summable=True,
            ),
            _num(
                "total_price",
                "float",
                "price of the stay in euros",
                "total price",
                40,
                9000,
                "euros",
                summable=True,
            ),
            _kw(
                "booking_channel",
                "where the booking was made",
                "booking channel",
                ("website", "mobile_app", "travel_agent", "phone"),
                "made via {v}",
                "booked through {v}",
            ),
            _kw(
                "guest_country",
                "country of residence of the guest",
                "guest country",
                ("Spain", "Germany", "Ireland", "Canada", "Japan"),
                "by guests from {v}",
            ),
            _txt(
                "guest_review",
                "review left by the guest after the stay, if any",
                "guest review",
                ("great breakfast", "noisy room", "friendly staff", "slow check-in"),
                exists_ok=True,
            ),
        ),
        main_date="booked_at",
    ),
)
