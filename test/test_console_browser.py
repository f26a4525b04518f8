# Copyright 2026 ldka_ros maintainers. Licensed under the Apache License 2.0.
"""
The console in a real browser: headless Chromium (Debian's package) driven by Selenium.

Against a real graph (camera stream, segmentation, learner, console) the test does what
an operator does with the mouse: drags a box around a car on the live frame, sees the
proposed mask, accepts it as ``car``; clicks a point on the car for a second label;
starts learning with a small iteration count and watches the progress; sees the
segmentation node serve the new version; rolls back to the first one.

Chromium and chromedriver come from the OS (``scripts/setup_env.sh`` installs them with
apt where it can); nothing is downloaded at run time. Without them the test skips and
says why. ``LDKA_CONSOLE_SCREENSHOTS=<folder>`` saves the screenshots the README shows.
"""
from __future__ import annotations

import os
from pathlib import Path
import shutil

from console_graph import start_console_graph
import numpy as np
import pytest

pytestmark = [pytest.mark.ros, pytest.mark.slow]

TOKEN = 'browser-test-token'
BROWSER = shutil.which('chromium') or shutil.which('chromium-browser')
DRIVER = shutil.which('chromedriver')
SHOTS = os.environ.get('LDKA_CONSOLE_SCREENSHOTS', '')


@pytest.fixture
def browser():
    """Yield a headless Chromium WebDriver using the system browser and driver."""
    if not BROWSER or not DRIVER:
        pytest.skip('headless Chromium is not installed (chromium and chromedriver from '
                    'apt; scripts/setup_env.sh installs them when run as root)')
    webdriver = pytest.importorskip('selenium.webdriver', reason='selenium is not installed '
                                    '(requirements/dev.txt)')
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = BROWSER
    for arg in ('--headless=new', '--no-sandbox', '--disable-dev-shm-usage',
                '--disable-gpu', '--window-size=1400,1000'):
        options.add_argument(arg)
    driver = webdriver.Chrome(service=Service(executable_path=DRIVER), options=options)
    driver.set_page_load_timeout(60)
    try:
        yield driver
    finally:
        driver.quit()


def _shot(driver, name: str) -> None:
    if SHOTS:
        Path(SHOTS).mkdir(parents=True, exist_ok=True)
        driver.save_screenshot(str(Path(SHOTS) / f'{name}.png'))


def _canvas_offset(driver, canvas, x: float, y: float) -> tuple[int, int]:
    """Return the offset from the canvas centre of image pixel (x, y) (Selenium 4 rule)."""
    width = driver.execute_script('return arguments[0].width;', canvas)
    rect = canvas.rect
    scale = rect['width'] / float(width)
    return (int(round((x - width / 2.0) * scale)),
            int(round((y - driver.execute_script('return arguments[0].height;', canvas)
                       / 2.0) * scale)))


def _wait_text(driver, element_id: str, predicate, timeout: float, what: str) -> str:
    from selenium.webdriver.support.ui import WebDriverWait

    def check(d):
        text = d.find_element('id', element_id).text
        return text if predicate(text) else False
    try:
        return WebDriverWait(driver, timeout, poll_frequency=0.2).until(check)
    except Exception as exc:  # noqa: B902 - say what the page showed instead
        shown = driver.find_element('id', element_id).text
        message = driver.find_element('id', 'message').text
        raise AssertionError(f'waiting for {what}: #{element_id} shows {shown!r}; message '
                             f'{message!r}') from exc


def _accept_as(driver, name: str, shot: str = '') -> None:
    _wait_text(driver, 'proposal-info', lambda t: ' px ' in t, 60, 'a proposed mask')
    if shot:
        _shot(driver, shot)
    field = driver.find_element('id', 'class-name')
    field.clear()
    field.send_keys(name)
    driver.find_element('id', 'accept').click()
    _wait_text(driver, 'message', lambda t: 'stored frame' in t, 60, 'the label to be stored')


def test_operator_labels_learns_sees_the_swap_and_rolls_back_in_a_browser(
        browser, tmp_path, camvid_root, ros_launcher, ros_node, ros_namespace):
    from selenium.webdriver.common.action_chains import ActionChains

    graph = start_console_graph(tmp_path, camvid_root, ros_launcher, ros_node, ros_namespace,
                                token=TOKEN)
    try:
        browser.get(f'{graph.url}/?token={TOKEN}')
        _wait_text(browser, 'status', lambda t: 'serving v0001' in t, 60, 'the live frame')
        canvas = browser.find_element('id', 'draw')
        x, y, w, h = graph.car_box
        start = _canvas_offset(browser, canvas, x, y)
        end = _canvas_offset(browser, canvas, x + w, y + h)
        ActionChains(browser).move_to_element_with_offset(canvas, *start).click_and_hold() \
            .move_to_element_with_offset(canvas, *end).release().perform()
        _accept_as(browser, 'car', shot='console-label')

        ys, xs = np.nonzero(graph.car)
        centre = _canvas_offset(browser, canvas, float(np.median(xs)), float(np.median(ys)))
        ActionChains(browser).move_to_element_with_offset(canvas, *centre).click().perform()
        _accept_as(browser, 'car')
        _wait_text(browser, 'classes', lambda t: 'car: 2 pending' in t, 30,
                   'two pending car frames')

        # What to label next: a suggestion loads its frame and box as a prompt.
        _wait_text(browser, 'suggestions', lambda t: 'unsure' in t and 'no longer' not in t,
                   60, 'a label suggestion')
        stamp = browser.execute_script(
            "const li = document.querySelector('#suggestions li:not(.gone)');"
            'li.click(); return state.frame.stamp;')
        _wait_text(browser, 'proposal-info', lambda t: ' px ' in t, 60, 'the suggested box')
        assert browser.find_element('id', 'frame').get_attribute('data-stamp') == stamp
        browser.find_element('id', 'show-margin').click()  # the unsure areas, bright
        _shot(browser, 'console-suggestion')
        browser.find_element('id', 'reject').click()
        browser.find_element('id', 'show-margin').click()

        iterations = browser.find_element('id', 'iterations')
        iterations.clear()
        iterations.send_keys('3')
        browser.find_element('id', 'learn').click()
        phases = ('training', 'exporting', 'validating')
        _wait_text(browser, 'job-phase', lambda t: t.startswith(phases), 300,
                   'learning progress')
        _shot(browser, 'console-learn')
        _wait_text(browser, 'job-state', lambda t: t == 'succeeded', 400, 'the learning job')
        assert 'new version v0002' in browser.find_element('id', 'job-result').text
        _wait_text(browser, 'status', lambda t: 'serving v0002' in t, 120,
                   'the segmentation node to swap to v0002')
        _wait_text(browser, 'active-version', lambda t: t == 'v0002', 30, 'the versions list')
        _shot(browser, 'console-versions')

        browser.find_element('css selector', 'button.rollback[data-version="v0001"]').click()
        _wait_text(browser, 'active-version', lambda t: t == 'v0001', 30, 'the rollback')
        _wait_text(browser, 'status', lambda t: 'serving v0001' in t, 120,
                   'the segmentation node to swap back to v0001')
    finally:
        graph.stop()
    ros_launcher.check_alive()
