"""WIDER FACE: conversion of the official files and the official evaluation."""
