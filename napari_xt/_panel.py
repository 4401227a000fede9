"""Small Qt pieces of the dock: a label that wraps anything, and the class legend / classification table.

The status line carries file paths and error messages of any length; a plain QLabel asks
for the width of its longest word and napari's dock grows until the canvas has none left.
:class:`WrappedLabel` wraps at spaces and inside paths and never asks for width.

:class:`ClassTable` is the legend (each class in the colour every output uses) and, after a
run, the slide (or ROI) classification as bars, with the share of analysed tokens each class
got in the heatmap: what a pathologist reads at a glance.
"""

from __future__ import annotations

import re
from typing import Sequence

from qtpy.QtCore import Qt
from qtpy.QtGui import QColor
from qtpy.QtWidgets import QAbstractItemView, QHeaderView, QLabel, QProgressBar, QSizePolicy, QTableWidget, QTableWidgetItem

from xt_core.outputs.colours import class_colour

_ZWSP = "\u200b"  # a break opportunity that prints nothing


def breakable(text: str) -> str:
    """``text`` with invisible break opportunities after path separators and underscores."""
    return re.sub(r"([/\\_.:,-])(?=\S)", lambda m: m.group(1) + _ZWSP, text)


class WrappedLabel(QLabel):
    """A QLabel that wraps long text (paths included) instead of widening its dock."""

    def __init__(self, text: str = "", rich: bool = False) -> None:
        super().__init__()
        self.setWordWrap(True)
        self.setTextFormat(Qt.TextFormat.RichText if rich else Qt.TextFormat.PlainText)
        self.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        policy = QSizePolicy(QSizePolicy.Policy.Ignored, QSizePolicy.Policy.Preferred)
        policy.setHeightForWidth(True)
        self.setSizePolicy(policy)
        self.setMinimumWidth(1)
        self.set_text(text)

    def set_text(self, text: str) -> None:
        self._raw = text
        self.setText(text if self.textFormat() == Qt.TextFormat.RichText else breakable(text))
        self._fit_height()

    def resizeEvent(self, event) -> None:  # noqa: N802 (Qt's name)
        super().resizeEvent(event)
        self._fit_height()

    def _fit_height(self) -> None:
        """Ask for the height the text needs at the width the label has.

        Layouts inside a scroll area do not ask a label its height for its width, so a wrapped
        text would be cut after the lines its default width gives.
        """
        if self.width() > 1:
            height = self.heightForWidth(self.width())
            if height > 0 and height != self.minimumHeight():
                self.setMinimumHeight(height)

    def raw_text(self) -> str:
        """The text as given (without the invisible break marks)."""
        return self._raw


class ClassTable(QTableWidget):
    """Legend and classification: colour | class | slide probability (bar) | heatmap share."""

    HEADERS = ("", "class", "slide p", "area")

    def __init__(self) -> None:
        super().__init__(0, len(self.HEADERS))
        self.setHorizontalHeaderLabels(list(self.HEADERS))
        self.verticalHeader().setVisible(False)
        self.setEditTriggers(QAbstractItemView.EditTrigger.NoEditTriggers)
        self.setSelectionMode(QAbstractItemView.SelectionMode.NoSelection)
        self.setFocusPolicy(Qt.FocusPolicy.NoFocus)
        header = self.horizontalHeader()
        header.setSectionResizeMode(0, QHeaderView.ResizeMode.Fixed)
        header.setSectionResizeMode(1, QHeaderView.ResizeMode.Stretch)
        header.setSectionResizeMode(2, QHeaderView.ResizeMode.Stretch)
        header.setSectionResizeMode(3, QHeaderView.ResizeMode.ResizeToContents)
        self.setColumnWidth(0, 18)
        self.verticalHeader().setSectionResizeMode(QHeaderView.ResizeMode.Fixed)
        self.setVerticalScrollBarPolicy(Qt.ScrollBarPolicy.ScrollBarAlwaysOff)
        self.setHorizontalScrollBarPolicy(Qt.ScrollBarPolicy.ScrollBarAlwaysOff)
        self.setSizePolicy(QSizePolicy.Policy.Ignored, QSizePolicy.Policy.Fixed)
        self.setMinimumWidth(1)
        self._classes: list[str] = []

    def show_classes(self, classes: Sequence[str]) -> None:
        """The legend alone (a model chosen, nothing run yet)."""
        self._classes = list(classes)
        self.setRowCount(len(classes))
        for i, name in enumerate(classes):
            swatch = QTableWidgetItem("")
            swatch.setBackground(QColor(*class_colour(i)))
            self.setItem(i, 0, swatch)
            self.setItem(i, 1, QTableWidgetItem(str(name)))
            self.removeCellWidget(i, 2)
            self.setItem(i, 2, QTableWidgetItem("-"))
            self.setItem(i, 3, QTableWidgetItem("-"))
        self._fit_height()

    def show_result(self, classes: Sequence[str], probabilities: Sequence[float] | None,
                    shares: Sequence[float] | None) -> None:
        """Probabilities as bars (the predicted class in bold) and each class's share of the heatmap."""
        self.show_classes(classes)
        best = max(range(len(classes)), key=lambda i: probabilities[i]) if probabilities is not None else None
        for i in range(len(classes)):
            if probabilities is not None:
                bar = QProgressBar()
                bar.setRange(0, 1000)
                bar.setValue(int(round(float(probabilities[i]) * 1000)))
                bar.setFormat(f"{float(probabilities[i]):.3f}")
                bar.setTextVisible(True)
                self.setItem(i, 2, QTableWidgetItem(""))
                self.setCellWidget(i, 2, bar)
            if shares is not None:
                self.setItem(i, 3, QTableWidgetItem(f"{100 * float(shares[i]):.0f} %"))
            font = self.item(i, 1).font()
            font.setBold(i == best)
            self.item(i, 1).setFont(font)

    def probability_text(self, row: int) -> str:
        """The probability shown in ``row`` ('-' when the model does not classify)."""
        bar = self.cellWidget(row, 2)
        return bar.format() if isinstance(bar, QProgressBar) else self.item(row, 2).text()

    def _fit_height(self) -> None:
        """Exactly as tall as its rows: a legend is read at a glance, never scrolled."""
        header = self.horizontalHeader().sizeHint().height()
        rows = self.verticalHeader().defaultSectionSize() * self.rowCount()
        self.setFixedHeight(header + rows + 2 * self.frameWidth())
