"""Catalogue files -> item attributes (the writes into the feature store are tested with the API
in tests/test_serving.py)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from batch.catalogue import read_catalogue
from tests.conftest import ML100K


def test_movielens_items_with_their_genres() -> None:
    frame = read_catalogue(ML100K.with_name("u.item")).frame().set_index("item_id")
    assert len(frame) == 1682
    assert frame.loc["50", "title"] == "Star Wars (1977)"
    assert frame.loc["50", "category"] == "Action|Adventure|Romance|Sci-Fi|War"  # the genre flags, named by u.genre
    assert frame.loc["1", "category"] == "Animation|Children's|Comedy"
    assert json.loads(frame.loc["1", "attributes"])["release_date"] == "01-Jan-1995"


def test_a_csv_by_header_or_position_keeps_extra_columns_and_skips_rows_without_an_id(tmp_path: Path) -> None:
    with_header = tmp_path / "items.csv"
    with_header.write_text("sku,name,cat,brand\n42,Red shoe,shoes,Acme\n,Nameless,hats,\n43,Blue hat,hats,\n")
    by_name = read_catalogue(with_header, {"item_id": "sku", "title": "name", "category": "cat", "brand": "brand"})
    headerless = tmp_path / "items.tsv"
    headerless.write_text("42\tRed shoe\tshoes\tAcme\n\tNameless\thats\t\n43\tBlue hat\thats\t\n")
    by_position = read_catalogue(headerless, {"item_id": "0", "title": "1", "category": "2", "brand": "3"}, "\t")
    for catalogue in (by_name, by_position):
        rows = catalogue.frame().to_dict("records")
        assert rows == [{"item_id": "42", "title": "Red shoe", "category": "shoes", "attributes": '{"brand":"Acme"}'},
                        {"item_id": "43", "title": "Blue hat", "category": "hats", "attributes": None}]
        assert [n for n, _ in catalogue.rejected] == [3 if catalogue is by_name else 2]


def test_a_file_without_a_mapping_is_refused_with_an_example(tmp_path: Path) -> None:
    path = tmp_path / "items.csv"
    path.write_text("sku,name\n1,x\n")
    with pytest.raises(ValueError, match="--columns item_id=sku,title=name"):
        read_catalogue(path)
    with pytest.raises(FileNotFoundError, match="u.item"):
        read_catalogue(tmp_path / "missing.csv", {"item_id": "sku"})
